"""The daemon through operational faults: a second daemon, a damaged job file, odd configuration files,
stray signals, a full disk. It refuses what it cannot start with in one line and exit status 2,
and keeps running through the rest."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cllm.coord.checkpoints.store import list_checkpoints

from .daemon import Daemon, write_config


def serve(config: Path, timeout=60, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cllm.coord", "serve", "--config", str(config)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def one_line(out: subprocess.CompletedProcess, *fragments) -> None:
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), out.stderr[-3000:]


def test_a_second_daemon_on_the_same_state_directory_is_refused_in_one_line(tmp_path):
    config = write_config(tmp_path)
    first = Daemon(config)
    try:
        first.wait_for_step(3)
        other = config.with_name("other.toml")  # same state directory, its own socket
        other.write_text(config.read_text().replace(str(first.socket), str(first.socket.with_name("other.sock"))))
        one_line(serve(other), "another daemon", "state")
        assert first.ctl("status")["result"]["state"] == "running"
    finally:
        assert first.stop() == 0


def test_a_second_daemon_on_a_live_socket_is_refused_and_the_first_stays_reachable(tmp_path):
    first = Daemon(write_config(tmp_path))
    try:
        first.wait_for_step(3)
        (tmp_path / "b").mkdir()
        other = write_config(tmp_path / "b")  # another state directory, the first one's socket
        other.write_text(other.read_text().replace(next(line.split('"')[1] for line in other.read_text().splitlines()
                                                        if line.startswith("socket")), str(first.socket)))
        one_line(serve(other), "another daemon is listening", str(first.socket))
        assert first.socket.exists() and first.ctl("status")["ok"]
    finally:
        assert first.stop() == 0


@pytest.mark.parametrize("damage", ['[{"id": 5}]', '[{"id": "../../outside", "status": "queued"}]', "{not json",
                                    '{"jobs": []}', "[" * 50_000, '[{"id": "job-1", "status": "queued", "overrides": 3}]'],
                         ids=["int-id", "escaping-id", "not-json", "not-a-list", "deep", "bad-overrides"])
def test_a_damaged_job_file_is_set_aside_and_the_daemon_trains(tmp_path, damage):
    config = write_config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "jobs.json").write_text(damage)
    daemon = Daemon(config)
    try:
        event = daemon.wait_for(lambda e: e["event"] == "jobs_file_damaged")
        daemon.wait_for_step(3)
        assert Path(event["moved_to"]).read_text() == damage
        assert [job["id"] for job in daemon.ctl("jobs")["result"]] == ["main"]
        assert not (tmp_path / "outside").exists()
    finally:
        assert daemon.stop() == 0


def test_a_configuration_that_is_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "cllm.toml"
    os.mkfifo(fifo)
    one_line(serve(fifo, timeout=30), str(fifo), "not a regular file")


def test_metrics_without_prometheus_client_are_refused_in_one_line(tmp_path):
    config = write_config(tmp_path)
    config.write_text(config.read_text() + "\n[metrics]\nenabled = true\n")
    hidden = tmp_path / "hidden" / "prometheus_client"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('No module named prometheus_client')\n")
    one_line(serve(config, env={"PYTHONPATH": str(hidden.parent)}), "prometheus", "[metrics] enabled")


@pytest.mark.parametrize("make", ["under a file", "immutable"])
def test_an_unusable_state_directory_is_refused_in_one_line(tmp_path, make):
    config = write_config(tmp_path)
    if make == "under a file":
        (tmp_path / "blocker").write_text("")
        config.write_text(config.read_text().replace('state_dir = "state"', 'state_dir = "blocker/state"'))
    else:
        (tmp_path / "state").mkdir()
        if subprocess.run(["chattr", "+i", str(tmp_path / "state")], capture_output=True).returncode:
            pytest.skip("chattr +i is not available here")
    try:
        one_line(serve(config), "state directory")
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "state")], capture_output=True)


def test_sigusr1_and_sigusr2_are_ignored(tmp_path):
    daemon = Daemon(write_config(tmp_path))
    try:
        daemon.wait_for_step(3)
        daemon.process.send_signal(signal.SIGUSR1)
        daemon.process.send_signal(signal.SIGUSR2)
        daemon.wait_for(lambda e: e["event"] == "signal_ignored" and e["signal"] == "SIGUSR2")
        before = daemon.ctl("status")["result"]["step"]
        daemon.wait_for_step(before + 3)
    finally:
        assert daemon.stop() == 0


def mount_tmpfs(path: Path, megabytes: int) -> None:
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}M", "tmpfs", str(path)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here to fill a disk")


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_fails_checkpoints_not_the_daemon_and_a_restart_with_space_continues(tmp_path):
    state = tmp_path / "state"
    mount_tmpfs(state, 24)
    try:
        config = write_config(tmp_path, checkpoint_interval=5)
        daemon = Daemon(config)
        try:
            daemon.wait_for(lambda e: e["event"] == "checkpoint_saved")
            filler = fill(state)
            failed = daemon.wait_for(lambda e: e["event"] == "checkpoint_failed")
            daemon.wait_for_step(failed["step"] + 6)  # still training: it retries at the next interval
            asked = daemon.ctl("checkpoint")
            assert not asked["ok"] and "No space left" in asked["error"]["detail"]
            daemon.process.send_signal(signal.SIGTERM)  # the checkpoint at the stop cannot be written either
            assert daemon.process.wait(120) == 0
            paused = daemon.wait_for(lambda e: e["event"] == "job_paused")
            assert "No space left" in paused["error"]
        finally:
            daemon.stop()
        last = list_checkpoints(state / "jobs" / "main")[-1]
        filler.unlink()
        again = Daemon(config)
        try:
            resumed = again.wait_for(lambda e: e["event"] == "resumed")
            assert resumed["checkpoint"] == str(last)
            again.wait_for(lambda e: e["event"] == "checkpoint_saved")
        finally:
            assert again.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(state)], capture_output=True)


def test_an_operational_error_at_start_pauses_the_job_and_status_says_why(tmp_path):
    config = write_config(tmp_path)
    state = tmp_path / "state"
    (state / "jobs").mkdir(parents=True)
    (state / "jobs" / "main").write_text("a file where the run directory goes")
    daemon = Daemon(config)
    try:
        daemon.wait_for(lambda e: e["event"] == "job_paused")
        status = daemon.ctl("status")["result"]
        assert status["state"] == "paused" and status["job"] == "main" and "jobs/main" in status["reason"]
        (state / "jobs" / "main").unlink()  # the cause fixed: resume without a restart
        assert daemon.ctl("resume")["ok"]
        daemon.wait_for_step(3)
    finally:
        assert daemon.stop() == 0


def test_a_pause_while_paused_answers_at_once_and_resume_continues(tmp_path):
    daemon = Daemon(write_config(tmp_path))
    try:
        daemon.wait_for_step(3)
        first = daemon.ctl("pause")["result"]
        again = daemon.ctl("pause", timeout=10)  # held until a resume, before: a client stuck with it
        assert again["ok"] and again["result"] == {"paused": True, "step": first["step"]}
        assert daemon.ctl("resume")["ok"]
        daemon.wait_for_step(first["step"] + 3)
    finally:
        assert daemon.stop() == 0


def test_an_emptied_latest_checkpoint_is_passed_over_and_the_job_goes_on(tmp_path):
    config = write_config(tmp_path, checkpoint_interval=5)
    daemon = Daemon(config)
    try:
        daemon.wait_for(lambda e: e["event"] == "checkpoint_saved" and e["step"] >= 10)
    finally:
        assert daemon.stop() == 0
    run = tmp_path / "state" / "jobs" / "main"
    found = list_checkpoints(run)
    newest = found[-1]
    for item in newest.iterdir():  # what a rewrite cut short left before: the directory, emptied
        item.unlink()
    again = Daemon(config)
    try:
        resumed = again.wait_for(lambda e: e["event"] == "resumed")
        assert resumed["checkpoint"] == str(found[-2])
        again.wait_for_step(resumed["step"] + 3)
        assert again.ctl("jobs")["result"][0]["status"] == "running"
    finally:
        assert again.stop() == 0
