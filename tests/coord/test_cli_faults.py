"""`cllm` at its edges: run directories that are unusable, busy or another run's; prompts and outputs
that cannot be used. One line and a non-zero status before any training, never a traceback."""

import json
import os
import signal
import subprocess
import time

import pytest

from cllm.coord.checkpoints.store import list_checkpoints

from .runs import TINY_MODEL, cllm, command, events, refused, small_corpus


def train(corpus, run, *extra, steps=4):
    return cllm("train", corpus, *TINY_MODEL, "--steps", steps, "--threads", 1, "--checkpoint-dir", run,
                "--cache-dir", run.parent / "cache", *extra)


def test_a_checkpoint_dir_that_is_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "taken").write_text("a file")
    refused(train(small_corpus(tmp_path), tmp_path / "taken"), 1, "cannot use the run directory", "taken")


def test_an_unwritable_checkpoint_dir_is_refused_before_training(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    if subprocess.run(["chattr", "+i", str(run)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        refused(train(small_corpus(tmp_path), run), 1, "run directory", "Operation not permitted")
    finally:
        subprocess.run(["chattr", "-i", str(run)])


def test_a_new_run_into_another_run_s_directory_is_refused_unless_overwrite(tmp_path):
    corpus, run = small_corpus(tmp_path), tmp_path / "run"
    assert train(corpus, run, "--eval-interval", 2).returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != "run.lock"}
    best = (run / "best.json").read_text()
    refused(train(corpus, run, "--learning-rate", "1e-5"), 2, "holds the checkpoints of run", "--overwrite")
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != "run.lock"} == before and (run / "best.json").read_text() == best
    owner = json.loads((run / "run.json").read_text())["run"]
    again = train(corpus, run, "--overwrite", steps=2)
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "run.json").read_text())["run"] != owner
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-00000002"]  # none of the old run's left


def test_resuming_into_another_run_s_directory_is_refused(tmp_path):
    corpus = small_corpus(tmp_path)
    assert train(corpus, tmp_path / "a").returncode == 0
    assert train(corpus, tmp_path / "b").returncode == 0
    result = cllm("train", "--resume", tmp_path / "a", "--steps", 6, "--checkpoint-dir", tmp_path / "b",
                  "--cache-dir", tmp_path / "cache")
    refused(result, 2, "holds the checkpoints of run")


def test_a_second_training_process_on_one_run_directory_is_refused_and_sigusr_is_ignored(tmp_path):
    corpus, run = small_corpus(tmp_path), tmp_path / "run"
    first = subprocess.Popen(command("train", corpus, *TINY_MODEL, "--steps", 100000, "--threads", 1,
                                     "--checkpoint-dir", run, "--cache-dir", tmp_path / "cache", "--log-format",
                                     "json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stdout:
            if '"step"' in line:
                break
        refused(train(corpus, run), 2, "in use by another training process", f"pid {first.pid}")
        first.send_signal(signal.SIGUSR1)  # by default these end a process on the spot, without a checkpoint
        first.send_signal(signal.SIGUSR2)
        for line in first.stdout:
            if '"signal_ignored"' in line and "SIGUSR2" in line:
                break
    finally:
        first.terminate()
        first.wait(60)
    assert first.returncode == 0 and list_checkpoints(run)


def test_resume_refuses_a_tokenizer_other_than_the_checkpoint_s(tmp_path):
    corpus, run = small_corpus(tmp_path), tmp_path / "run"
    assert train(corpus, run).returncode == 0
    refused(cllm("train", "--resume", run, "--tokenizer", "bpe", "--steps", 8), 2, "--tokenizer bpe differs")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("generate")
    assert train(small_corpus(tmp), tmp / "run").returncode == 0
    return tmp / "run"


def test_generate_refuses_a_prompt_that_is_not_utf8(trained):
    prompt = b"\xff\xfeROMEO"
    result = subprocess.run([*command("generate", trained), b"--prompt", prompt], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not UTF-8" in result.stderr


def test_generate_with_standard_output_closed_is_one_line(trained):
    result = subprocess.run(command("generate", trained, "--prompt", "RO"), stdout=None, stderr=subprocess.PIPE,
                            text=True, timeout=120, pass_fds=(), close_fds=True,
                            preexec_fn=lambda: __import__("os").close(1))
    assert result.returncode == 2 and "standard output is closed" in result.stderr
    assert "Traceback" not in result.stderr


def test_generate_into_a_pipe_closed_early_exits_quietly(trained):
    reader = subprocess.Popen(command("generate", trained, "--prompt", "RO", "--max-new-tokens", 2000),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.read(3)
    reader.stdout.close()
    deadline = time.monotonic() + 120
    while reader.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reader.returncode == 0 and b"Traceback" not in reader.stderr.read()


def test_resume_passes_over_a_damaged_latest_checkpoint_with_one_warning(tmp_path):
    corpus, run = small_corpus(tmp_path), tmp_path / "run"
    assert train(corpus, run, "--checkpoint-interval", 2, steps=6).returncode == 0
    os.truncate(run / "checkpoint-00000006" / "model.safetensors", 100)
    result = cllm("train", "--resume", run, "--steps", 8, "--cache-dir", tmp_path / "cache", "--log-format", "json")
    assert result.returncode == 0, result.stderr
    log = events(result.stdout)
    (fallback,) = [e for e in log if e["event"] == "checkpoint_fallback"]
    assert list(fallback["skipped"]) == ["checkpoint-00000006"]
    assert next(e for e in log if e["event"] == "resumed")["step"] == 4


@pytest.mark.parametrize("args", [["train", "no\nsuch.txt", "--steps", "1"], ["generate", "no\nrun", "--prompt", "a"]],
                         ids=["train", "generate"])
def test_a_path_with_a_line_break_is_still_one_line(args):
    line = refused(cllm(*args), 2)
    assert "no\\nsuch.txt" in line or "no\\nrun" in line
