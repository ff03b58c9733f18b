"""A run's history, metrics.jsonl: every step once, its evaluations, continued across a kill and a resume."""

import io
import json
import os
import re
import signal
import subprocess
import time
from datetime import datetime

import pytest
from structlog.testing import capture_logs

from cllm.coord.logs import configure
from cllm.coord.training.history import FILE, History
from cllm.coord.training.hooks import Hook, Hooks

from .runs import TINY_MODEL, cllm, command, small_corpus


def history_of(run) -> list:
    return [json.loads(line) for line in (run / FILE).read_text().splitlines()]


def take_steps(hooks: Hooks, steps, evaluate=(), checkpoint=()) -> None:
    """Fire the hooks the trainer fires for ``steps``, as the loop orders them."""
    for step in steps:
        hooks.fire(Hook.BATCH_START, step=step, epoch=0, lr=1e-3 * step)
        hooks.fire(Hook.BATCH_END, step=step, loss=10.0 / step, grad_norm=float("nan") if step == 3 else 1.0,
                   tokens=256, seconds=0.01, applied=step != 3)
        if step in evaluate:
            hooks.fire(Hook.EVALUATED, step=step, val_loss=20.0 / step)
        if step in checkpoint:
            hooks.fire(Hook.CHECKPOINT, step=step, path="", best=False)


def test_history_holds_each_step_once_with_its_evaluation(tmp_path):
    history, hooks = History(tmp_path), Hooks()
    history.attach(hooks)
    take_steps(hooks, range(1, 11), evaluate={5, 10}, checkpoint={10})
    history.close()
    lines = history_of(tmp_path)
    assert [r["step"] for r in lines] == list(range(1, 11))
    assert [r["step"] for r in lines if "val_loss" in r] == [5, 10]
    assert lines[4]["val_loss"] == 4.0 and lines[4]["loss"] == 2.0 and lines[4]["lr"] == 5e-3
    assert lines[2]["grad_norm"] is None  # not finite: null, and the file stays strict JSON
    assert lines[0]["tokens_per_s"] == 25600.0
    assert all(a["wall_s"] <= b["wall_s"] for a, b in zip(lines, lines[1:]))
    assert all(datetime.fromisoformat(r["time"]).utcoffset().total_seconds() == 0 for r in lines)


def test_a_resumed_history_drops_the_steps_past_its_checkpoint_and_a_torn_line(tmp_path):
    history, hooks = History(tmp_path), Hooks()
    history.attach(hooks)
    take_steps(hooks, range(1, 18), checkpoint={10})  # killed at step 17: never closed
    with open(tmp_path / FILE, "a") as f:
        f.write('{"step": 18, "lo')  # a line the kill cut short
    wall_at_10 = history_of_lines(tmp_path)[9]["wall_s"]

    resumed, hooks = History(tmp_path, resumed_step=10), Hooks()
    resumed.attach(hooks)
    take_steps(hooks, range(11, 21), checkpoint={20})
    resumed.close()
    lines = history_of(tmp_path)
    assert [r["step"] for r in lines] == list(range(1, 21))
    assert lines[10]["wall_s"] >= wall_at_10  # the clock goes on from the checkpoint's


def history_of_lines(run) -> list:
    return [json.loads(line) for line in (run / FILE).read_text().splitlines() if line.endswith("}")]


def test_a_new_run_starts_its_history_afresh(tmp_path):
    (tmp_path / FILE).write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.0}\n')
    history, hooks = History(tmp_path), Hooks()
    history.attach(hooks)
    take_steps(hooks, [1])
    history.close()
    assert [r["step"] for r in history_of(tmp_path)] == [1]


def test_a_full_disk_loses_lines_whole_and_never_ends_the_run(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here to fill a disk")
    try:
        history, hooks = History(disk), Hooks()
        history.attach(hooks)
        take_steps(hooks, range(1, 6))
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as f:  # fill the disk
            for block in (512, 1):
                try:
                    while True:
                        f.write(b"\0" * block)
                except OSError:
                    pass
        configure("json", "info", stream=io.StringIO())  # whatever level an earlier test left
        with capture_logs() as logged:
            take_steps(hooks, range(6, 40), checkpoint={20})
            filler.unlink()
            take_steps(hooks, range(40, 45))
            history.close()
        lines = (disk / FILE).read_text().splitlines()
        steps = [json.loads(line)["step"] for line in lines]  # every line whole
        assert steps[:5] == [1, 2, 3, 4, 5] and steps[-5:] == [40, 41, 42, 43, 44] and len(steps) < 44
        # one warning per run of lost lines, not one a step (a short line may still fit the file's last page
        # between two that do not, and the next loss is a new run)
        assert logged and {e["event"] for e in logged} == {"history_not_written"}
        assert all(e["step"] - 1 in steps for e in logged), [e["step"] for e in logged]
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], capture_output=True)


def test_a_killed_and_resumed_run_has_every_step_once(tmp_path):
    corpus, run, cache = small_corpus(tmp_path), tmp_path / "run", tmp_path / "cache"
    options = [*TINY_MODEL, "--steps", "300", "--threads", "2", "--eval-interval", "50", "--checkpoint-interval",
               "100", "--checkpoint-dir", run, "--cache-dir", cache]
    process = subprocess.Popen(command("train", corpus, *options), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not ((run / "checkpoint-00000100").exists() and (run / FILE).exists()
               and max((r["step"] for r in history_of_lines(run)), default=0) >= 110):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = max(r["step"] for r in history_of_lines(run))
    latest = max(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))
    assert latest < killed_at  # lines past the checkpoint, which the resumed run takes again

    result = cllm("train", "--resume", run, "--threads", "2", "--cache-dir", cache)
    assert result.returncode == 0, result.stderr
    lines = history_of(run)
    assert [r["step"] for r in lines] == list(range(1, 301))
    assert [r["step"] for r in lines if "val_loss" in r] == [50, 100, 150, 200, 250, 300]
    assert all({"loss", "lr", "grad_norm", "tokens_per_s", "wall_s", "time"} <= set(r) for r in lines)
    assert all(a["wall_s"] <= b["wall_s"] for a, b in zip(lines, lines[1:]))
    assert lines[-1]["loss"] < lines[0]["loss"] - 0.5


@pytest.mark.parametrize("interval, expected", [([], [1, 10, 20]), (["--log-interval", "7"], [1, 7, 14, 20])])
def test_console_logs_to_a_pipe_have_step_events_every_log_interval(tmp_path, interval, expected):
    result = cllm("train", small_corpus(tmp_path), *TINY_MODEL, "--steps", "20", *interval, "--log-format", "console",
                  "--eval-interval", "0", "--checkpoint-dir", tmp_path / "run", "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    logged = [int(m.group(1)) for m in re.finditer(r"\] step .* step=(\d+) ", result.stdout)]
    assert logged == expected
    assert not result.stdout.lstrip().startswith("{")  # readable lines, not JSON
    assert result.stdout.splitlines()[-2] == f"Sample from it: cllm generate {tmp_path / 'run'} --prompt 'The '"


def test_a_history_that_cannot_be_written_is_logged_and_never_ends_the_run(tmp_path):
    """On a full disk (/dev/full) the buffered lines fail again when the file is closed: before, that was an
    OSError out of the run's end, and the daemon exited 1 into a restart loop instead of pausing the job."""
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")
    configure("json", "info", stream=io.StringIO())  # whatever level an earlier test left
    with capture_logs() as logs:
        history, hooks = History(tmp_path), Hooks()
        history.attach(hooks)
        take_steps(hooks, range(5, 9), evaluate={8}, checkpoint={8})
        history.close()
    assert any(e["event"] == "history_not_written" for e in logs)


@pytest.mark.parametrize("resumed", [None, 2], ids=["new", "resumed"])
def test_a_history_that_cannot_be_opened_is_logged_and_never_ends_the_run(tmp_path, resumed):
    run = tmp_path / "run"
    run.mkdir()
    if resumed:  # lines past the step resumed from: the file is rewritten, through a scratch file
        history, hooks = History(run), Hooks()
        history.attach(hooks)
        take_steps(hooks, range(1, 6))
        history.close()
    if subprocess.run(["chattr", "+i", str(run)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    configure("json", "info", stream=io.StringIO())
    try:
        with capture_logs() as logs:
            history, hooks = History(run, resumed), Hooks()
            history.attach(hooks)
            take_steps(hooks, range(1, 4), checkpoint={3})
            history.close()
    finally:
        subprocess.run(["chattr", "-i", str(run)])
    assert [e["event"] for e in logs] == ["history_not_written"]
