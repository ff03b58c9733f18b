"""`cllm train` under `mpiexec -n 2`: one run over two ranks, the same as one process; resume, faults, checks."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from cllm.coord.checkpoints.store import list_checkpoints, load_checkpoint

from ..coord.runs import cllm, command, small_corpus
from .mpirun import json_lines, mpiexec, mpiexec_path, script

TINY = ["--embed-dim", "32", "--num-layers", "2", "--num-heads", "2", "--seq-len", "32", "--batch-size", "7",
        "--dropout", "0.1", "--eval-interval", "10", "--eval-batches", "2",
        "--log-format", "json"]
LONG = 200  # steps of the runs that are killed on the way


def train_args(corpus, run, cache, steps, *extra) -> list:
    return ["train", corpus, *TINY, "--steps", steps, "--checkpoint-dir", run, "--cache-dir", cache, *extra]


def cllm_ranks(*args, n: int = 2, timeout: float = 300):
    run = mpiexec("-m", "cllm.coord", *args, n=n, timeout=timeout)
    assert run.returncode == 0, run.stderr
    return run


def cllm_alone(*args, timeout: float = 300):
    run = cllm(*args, timeout=timeout)
    assert run.returncode == 0, run.stderr
    return run


def final_params(run: Path) -> np.ndarray:
    return load_checkpoint(list_checkpoints(run)[-1]).params


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return small_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def two_ranks(corpus, tmp_path_factory):
    """A straight 2-rank run of LONG steps, one thread a rank: its run directory and standard output."""
    tmp = tmp_path_factory.mktemp("two-ranks")
    out = cllm_ranks(*train_args(corpus, tmp / "run", tmp / "cache", LONG, "--threads", "1",
                                 "--checkpoint-interval", "20"))
    return tmp / "run", out.stdout


def test_two_ranks_train_the_weights_of_one_process_with_two_threads_and_with_one(corpus, tmp_path):
    ranks = cllm_ranks(*train_args(corpus, tmp_path / "ranks", tmp_path / "cache", 20, "--threads", "1"))
    for threads in (2, 1):
        cllm_alone(*train_args(corpus, tmp_path / f"alone-{threads}", tmp_path / "cache", 20, "--threads", threads))
    got = final_params(tmp_path / "ranks")
    for threads in (2, 1):
        difference = np.max(np.abs(got - final_params(tmp_path / f"alone-{threads}")))
        print(f"2 ranks x 1 thread against 1 process x {threads} threads: max |dw| {difference:.3g}")
        assert difference < 1e-5
    # the two ranks split the rows (7: 3 and 4) where two threads do, and add the same two halves
    assert np.array_equal(got, final_params(tmp_path / "alone-2"))
    lines = json_lines(ranks.stdout)
    assert {e.get("rank") for e in lines} == {0}  # rank 0 writes the run's log; every line carries the rank
    assert [e["step"] for e in lines if e["event"] == "eval"] == [10, 20]
    saved = [e["path"] for e in lines if e["event"] == "checkpoint_saved"]  # by rank 0 alone, once each
    assert saved == [str(p) for p in list_checkpoints(tmp_path / "ranks")] and "checkpoint" not in ranks.stderr
    assert next(e for e in lines if e["event"] == "ranks_joined")["size"] == 2


def test_two_ranks_accumulating_micro_steps_train_the_weights_of_one_process_bit_for_bit(corpus, tmp_path):
    # 7 x 3 rows a step, 3 micro-steps: each rank sums 3 micro-batches of its 10 or 11 rows, one process 6 of 21
    args = ("--grad-accum", "3")
    cllm_ranks(*train_args(corpus, tmp_path / "ranks", tmp_path / "cache", 10, "--threads", "1", *args))
    cllm_alone(*train_args(corpus, tmp_path / "alone", tmp_path / "cache", 10, "--threads", "2", *args))
    assert np.array_equal(final_params(tmp_path / "ranks"), final_params(tmp_path / "alone"))


def start_ranks(*args, n: int = 2) -> subprocess.Popen:
    return subprocess.Popen([mpiexec_path(), "-n", str(n), *command(*args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def rank_pids(process: subprocess.Popen) -> dict:
    """rank -> pid, from rank 0's first line of the run (ranks_joined)."""
    line = json_lines(process.stdout.readline())[0]
    assert line["event"] == "ranks_joined", line
    return {where["rank"]: where["pid"] for where in line["ranks"]}


def wait_for_checkpoint(process: subprocess.Popen, run: Path, step: int) -> None:
    deadline = time.monotonic() + 240
    while not (run / f"checkpoint-{step:08d}").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_two_ranks_killed_after_a_checkpoint_resume_bitwise_on_two_ranks(corpus, two_ranks, tmp_path):
    straight, _ = two_ranks
    run = tmp_path / "run"
    process = start_ranks(*train_args(corpus, run, tmp_path / "cache", LONG, "--threads", "1",
                                      "--checkpoint-interval", "20"))
    pids = rank_pids(process)
    wait_for_checkpoint(process, run, 60)
    for pid in pids.values():  # the machine goes down: every rank at once
        os.kill(pid, signal.SIGKILL)
    process.communicate(timeout=60)
    latest = int(list_checkpoints(run)[-1].name.split("-")[1])
    assert 60 <= latest < LONG
    resumed = cllm_ranks("train", "--threads", "1", "--resume", run, "--cache-dir", tmp_path / "cache",
                         "--log-format", "json")
    assert next(e for e in json_lines(resumed.stdout) if e["event"] == "resumed")["step"] == latest
    assert np.array_equal(final_params(run), final_params(straight))


def test_a_checkpoint_of_two_ranks_resumes_on_one_process_and_on_three_ranks(corpus, two_ranks, tmp_path):
    straight, _ = two_ranks
    last = list_checkpoints(straight)[-2]  # a few steps before the end
    for n, threads in ((1, 2), (3, 1)):
        run = tmp_path / f"on-{n}"
        run.mkdir()
        os.symlink(last, run / last.name)  # the 2-rank run as it stood then
        args = ("train", "--threads", threads, "--resume", run / last.name, "--cache-dir", tmp_path / "cache",
                "--log-format", "json", "--checkpoint-dir", run)
        cllm_alone(*args) if n == 1 else cllm_ranks(*args, n=3)
        difference = np.max(np.abs(final_params(run) - final_params(straight)))
        print(f"2 ranks, then {n} x {threads}: max |dw| {difference:.3g}")
        if n == 1:  # two threads split the rows where two ranks did
            assert difference == 0
        else:  # three ranks add the rows' gradients in another order
            assert difference < 1e-4


@pytest.mark.parametrize("how", ["killed", "frozen", "frozen, the timeout from --config"])
def test_a_rank_killed_or_frozen_mid_run_ends_the_other_within_the_timeout(corpus, tmp_path, how):
    timeout = 5.0
    run = tmp_path / "run"
    if how.endswith("--config"):
        (tmp_path / "run.toml").write_text(f"[service]\nstep_timeout = {timeout}\n")
        given = ("--config", tmp_path / "run.toml")
        how = "frozen"
    else:
        given = ("--step-timeout", timeout)
    process = start_ranks(*train_args(corpus, run, tmp_path / "cache", 100_000, "--threads", "1",
                                      "--checkpoint-interval", "20", *given))
    pids = rank_pids(process)
    wait_for_checkpoint(process, run, 40)
    os.kill(pids[1], signal.SIGKILL if how == "killed" else signal.SIGSTOP)
    started = time.monotonic()
    out, err = process.communicate(timeout=60)
    assert process.returncode != 0
    assert time.monotonic() - started < timeout + 10
    if how == "frozen":  # rank 0 waits out the timeout and names the rank
        lost = [e for e in json_lines(out) if e["event"] == "rank_lost"]
        assert len(lost) == 1 and lost[0]["failed"] == [1], f"status {process.returncode}\n{out}\n{err}"
        assert "rank 1 has not been heard from" in lost[0]["reason"]
    else:  # rank 1's supervisor names it, then the launcher ends the job
        line = (f"cllm: error: rank 1 of 2 (pid {pids[1]} on {socket.gethostname()}) was killed by SIGKILL; the "
                "launcher ends the other ranks, and --resume continues from the last checkpoint")
        assert err.count(line) == 1, f"status {process.returncode}\n{out}\n{err}"
        assert "BAD TERMINATION" in out + err
    assert load_checkpoint(run).params.size > 0  # the latest checkpoint loads


def test_weights_that_diverge_stop_every_rank_with_one_line(corpus, tmp_path):
    run = mpiexec(script("diverge"), *train_args(corpus, tmp_path / "run", tmp_path / "cache", 40, "--threads", "1",
                                                  "--check-interval", "4"), timeout=300)
    assert run.returncode == 1
    line = ("cllm: run failed: at step 8 the weights of rank 1 differ from rank 0's (checksum")
    assert run.stderr.count(line) == 2, run.stderr
    assert not (tmp_path / "run" / "checkpoint-00000040").exists()


def test_a_bad_command_line_is_refused_by_every_rank_with_one_line_and_status_2():
    run = mpiexec("-m", "cllm.coord", "train", "--batch-size", "0", timeout=120)
    assert run.returncode == 2
    line = "cllm: error: argument --batch-size: 0 must be a positive integer (see 'cllm train --help')"
    # mpiexec can write one rank's newline after the other rank's line: count the lines, not the newlines
    assert run.stderr.count(line) == 2 and run.stderr.replace(line, "").strip() == ""
    assert run.stdout == ""


def test_a_batch_smaller_than_the_ranks_is_refused_by_every_rank(corpus, tmp_path):
    run = mpiexec("-m", "cllm.coord", *train_args(corpus, tmp_path / "run", tmp_path / "cache", 5, "--batch-size",
                                                   "1"), timeout=120)
    assert run.returncode == 2
    assert run.stderr.count("cllm: error: --batch-size 1 is fewer sequences than the 2 MPI ranks") == 2, run.stderr


def test_requests_to_rank_0_and_a_stop_from_rank_1_take_effect_on_every_rank(corpus, tmp_path):
    out = tmp_path / "answers.json"
    run = mpiexec(script("steer"), out, *train_args(corpus, tmp_path / "run", tmp_path / "cache", 100,
                                                     "--threads", "1", "--log-interval", "1"), timeout=300)
    assert run.returncode == 0, run.stderr
    answers = json.loads(out.read_text())
    first, second = answers["stats_1"], answers["stats_2"]
    # ranks -> groups -> workers, each rank with its busy, waiting and communication time
    assert first["ranks"] == second["ranks"] == 2
    assert [r["rank"] for r in first["children"]] == [0, 1]
    assert all(r["communication_s"] > 0 and r["busy_s"] > 0 for r in first["children"])
    assert [len(r["children"]) for r in first["children"]] == [1, 1]
    assert [len(r["children"]) for r in second["children"]] == [2, 2]  # both ranks took the second worker
    assert first["batches"] == 2 * 3 and first["tokens"] == 3 * 7 * 32  # three steps of 7 rows of 32 tokens
    assert answers["workers"] == {"workers": 2}
    assert answers["checkpoint"]["step"] == 5 and (tmp_path / "run" / "checkpoint-00000005").is_dir()
    assert answers["pause"] == {"paused": True, "step": 7}
    lines = json_lines(run.stdout)
    events = [(e["event"], e.get("step")) for e in lines if e["event"] in ("paused", "resumed_training",
                                                                           "shutdown_requested", "train_finished")]
    assert events == [("paused", 7), ("resumed_training", 7), ("shutdown_requested", 10), ("train_finished", 10)]
    assert next(e for e in lines if e["event"] == "shutdown_requested")["reason"] == "another rank's request"


def test_sigterm_to_mpiexec_stops_every_rank_at_one_boundary_with_a_checkpoint(corpus, tmp_path):
    run = tmp_path / "run"
    process = start_ranks(*train_args(corpus, run, tmp_path / "cache", 100_000, "--threads", "1",
                                      "--checkpoint-interval", "20"))
    rank_pids(process)
    wait_for_checkpoint(process, run, 20)
    process.send_signal(signal.SIGTERM)  # mpiexec passes it on to every rank
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    finished = next(e for e in json_lines(out) if e["event"] == "train_finished")
    assert finished["stopped"] == "SIGTERM"
    assert list_checkpoints(run)[-1].name == f"checkpoint-{finished['step']:08d}"
