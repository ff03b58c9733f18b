"""Exact resume: a run killed with SIGKILL and resumed ends where an uninterrupted one does."""

import os
import signal
import subprocess
import time

import numpy as np
import pytest

from cllm.coord.checkpoints.store import list_checkpoints, load_checkpoint

from .runs import TINY_MODEL, cllm, command, events, small_corpus

SCHEDULE = ["--lr-schedule", "cosine", "--warmup-steps", "20", "--learning-rate", "3e-3", "--min-lr", "3e-4",
            "--weight-decay", "0.1", "--eval-interval", "25", "--checkpoint-interval", "25", "--keep-checkpoints", "2"]


def train(corpus, run, cache, *extra):
    result = cllm("train", corpus, *TINY_MODEL, *SCHEDULE, "--steps", "200", "--checkpoint-dir", run,
                  "--cache-dir", cache, *extra)
    assert result.returncode == 0, result.stderr
    return result


def final_params(run):
    return load_checkpoint(list_checkpoints(run)[-1])[1]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    corpus = small_corpus(tmp)
    train(corpus, tmp / "run", tmp / "cache", "--threads", "2")
    return corpus, final_params(tmp / "run")


def kill_after_checkpoint(corpus, run, cache, step: int) -> None:
    """Start a 200-step run and SIGKILL it as soon as checkpoint ``step`` is on disk."""
    process = subprocess.Popen(command("train", corpus, *TINY_MODEL, *SCHEDULE, "--steps", "200", "--threads", "2",
                                       "--checkpoint-dir", run, "--cache-dir", cache),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run / f"checkpoint-{step:08d}").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def test_sigkill_then_resume_gives_bitwise_identical_weights(straight, tmp_path):
    corpus, expected = straight
    run = tmp_path / "run"
    kill_after_checkpoint(corpus, run, tmp_path / "cache", 100)
    latest = list_checkpoints(run)[-1]
    assert 100 <= int(latest.name.split("-")[1]) < 200
    # the data, model and every setting come from the checkpoint
    result = cllm("train", "--threads", "2", "--resume", run, "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    log = events(result.stdout)
    assert next(e for e in log if e["event"] == "resumed")["step"] == int(latest.name.split("-")[1])
    assert np.array_equal(final_params(run), expected)


def test_resume_with_another_thread_count_agrees_within_float32_tolerance(straight, tmp_path):
    corpus, expected = straight
    run = tmp_path / "run"
    train(corpus, run, tmp_path / "cache", "--threads", "2", "--steps", "100", "--decay-steps", "200")
    result = cllm("train", "--steps", "200", "--threads", "1", "--resume", run, "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    got = final_params(run)
    print("max difference", np.max(np.abs(got - expected)))
    assert np.max(np.abs(got - expected)) < 1e-3


def test_resume_refuses_a_model_size_that_differs(straight, tmp_path):
    corpus, _ = straight
    run = tmp_path / "run"
    train(corpus, run, tmp_path / "cache", "--steps", "30", "--checkpoint-interval", "0")
    result = cllm("train", corpus, "--embed-dim", "64", "--steps", "60", "--resume", run, "--cache-dir",
                  tmp_path / "cache")
    assert result.returncode == 2
    assert "--embed-dim 64 differs from the resumed run's 32" in result.stderr
