"""`cllm serve` under `mpiexec -n 2`: rank 0 is the daemon, the operator's requests take effect on both ranks."""

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from cllm.coord.checkpoints.store import load_checkpoint

from ..service.daemon import Daemon, write_config
from .mpirun import mpiexec_path


def received(sock) -> list:
    """The datagrams that have arrived: read until 0.2 s pass without one."""
    sock.settimeout(0.2)
    got = []
    while True:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            return got


def test_the_daemon_on_two_ranks_is_steered_through_rank_0(tmp_path, notify_socket):
    config = write_config(tmp_path, checkpoint_interval=1000)
    config.write_text(config.read_text().replace("threads = 2", "threads = 1"))
    notify_path, notify = notify_socket
    daemon = Daemon(config, env={"NOTIFY_SOCKET": notify_path}, launcher=(mpiexec_path(), "-n", "2"))
    try:
        daemon.wait_for_step(10)
        status = daemon.ctl("status")["result"]
        assert status["ranks"] == 2 and status["state"] == "running" and status["job"] == "main"
        # rank -> groups -> workers, each rank with its busy, waiting and communication time
        stats = daemon.ctl("stats")["result"]
        assert [r["rank"] for r in stats["children"]] == [0, 1]
        assert all(r["batches"] > 0 and r["communication_s"] > 0 and len(r["children"]) == 1
                   for r in stats["children"])
        assert daemon.ctl("workers", count=2)["result"] == {"workers": 2}
        stats = daemon.ctl("stats")["result"]
        assert [len(r["children"]) for r in stats["children"]] == [2, 2]  # both ranks took the second worker
        paused = daemon.ctl("pause")["result"]
        assert paused["paused"] is True
        time.sleep(1.5)
        assert daemon.ctl("status")["result"]["step"] == paused["step"]  # no rank trains while paused
        daemon.ctl("resume")
        daemon.wait_for_step(paused["step"] + 5)
        saved = daemon.ctl("checkpoint")["result"]
        path = tmp_path / "state" / "jobs" / "main" / f"checkpoint-{saved['step']:08d}"
        assert path.is_dir() and np.isfinite(load_checkpoint(path).params).all()
        reload_on_every_rank(daemon, config)
        assert daemon.ctl("stop")["result"] == {"stopping": True}
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
    messages = received(notify)
    assert sum("READY=1" in m for m in messages) == 1  # from rank 0 alone
    assert any(m.startswith("STATUS=step") for m in messages)
    ranks = {e.get("rank") for e in daemon.events}
    assert ranks == {0}
    assert [e["event"] for e in daemon.events if e["event"] == "service_stopped"] == ["service_stopped"]


def hidden_from_rank_1(directory: Path) -> tuple:
    """A launch of two ranks where rank 1 runs in a mount namespace of its own with an empty file system over
    ``directory``, as if its machine had no such directory: ``mpiexec -n 1 cllm : -n 1 unshare ... cllm``."""
    unshare = ["unshare", "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    cllm = [sys.executable, "-m", "cllm.coord", "serve"]
    rank_1 = [*unshare, "sh", "-c", 'mount -t tmpfs hidden "$0" && exec "$@"', str(directory)]
    return (mpiexec_path(), "-n", "1", *cllm, "--config", "CONFIG", ":", "-n", "1", *rank_1)


def rank_1_lines(daemon) -> list:
    with daemon.lock:
        return [json.loads(line) for line in daemon.errors if line.startswith('{"') and '"rank": 1' in line]


def reload_on_every_rank(daemon, config: Path) -> None:
    """`cllm ctl reload`, then SIGHUP to rank 0: both ranks take the new settings at one step boundary."""
    config.write_text(config.read_text().replace('level = "info"', 'level = "debug"')
                      .replace("eval_interval = 0", "eval_interval = 3"))
    reloaded = daemon.ctl("reload")["result"]
    assert reloaded["changed"] == {"logging.level": ["info", "debug"], "training.eval_interval": [0, 3]}
    assert reloaded["needs_restart"] == [] and reloaded["step"] > 0
    # both ranks evaluate every 3 steps from there (the validation losses are summed over them), and go on
    evaluated = daemon.wait_for(lambda e: e["event"] == "eval" and e["step"] > reloaded["step"])
    assert evaluated["step"] % 3 == 0
    daemon.wait_for_step(evaluated["step"] + 4)
    # rank 1 logs at rank 0's new level: its step lines (info) now reach standard error
    assert any(e["event"] == "step" and e["step"] > reloaded["step"] for e in rank_1_lines(daemon))
    config.write_text(config.read_text().replace('level = "debug"', 'level = "info"'))
    rank_0 = next(e for e in daemon.events if e["event"] == "ranks_joined")["ranks"][0]["pid"]
    os.kill(rank_0, signal.SIGHUP)  # not to mpiexec, which dies of it: to rank 0, which reloads every rank
    back = daemon.wait_for(lambda e: e["event"] == "config_reloaded" and e["step"] > evaluated["step"])
    assert back["changed"] == {"logging.level": ["debug", "info"]}
    daemon.wait_for_step(back["step"] + 2)
    seen = len(rank_1_lines(daemon))
    daemon.wait_for_step(back["step"] + 5)
    assert len(rank_1_lines(daemon)) == seen  # rank 1 is back to warnings only


def test_a_job_one_rank_cannot_start_is_refused_and_every_rank_goes_on_serving(tmp_path):
    config = write_config(tmp_path, steps=4, checkpoint_interval=1000)
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (tmp_path / "corpus.txt").rename(hidden / "corpus.txt")  # the job main reads it: rank 1 cannot
    config.write_text(config.read_text().replace('"corpus.txt"', '"hidden/corpus.txt"').replace("threads = 2",
                                                                                                "threads = 1"))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "corpus.txt").write_text((hidden / "corpus.txt").read_text())  # every rank sees this one
    launcher = tuple(str(config) if part == "CONFIG" else part for part in hidden_from_rank_1(hidden))
    daemon = Daemon(config, launcher=launcher)
    try:
        refused = daemon.wait_for(lambda e: e["event"] == "job_refused")
        missing = f"on rank 1: {hidden / 'corpus.txt'} does not exist; give a text file"
        assert refused["job"] == "main" and refused["error"].startswith(missing), refused
        jobs = daemon.ctl("jobs")["result"]
        assert [(j["id"], j["status"], j["detail"][:len(missing)]) for j in jobs] == [("main", "failed", missing)]
        assert daemon.ctl("status")["result"]["state"] == "idle"
        (tmp_path / "state" / "empty.txt").write_text("")  # rank 0 fails on it alone, while rank 1 waits for its ids
        assert daemon.ctl("submit", job={"data": {"path": str(tmp_path / "state" / "empty.txt")}})["ok"]
        refused = daemon.wait_for(lambda e: e["event"] == "job_refused" and e["job"] == "job-1")
        assert refused["error"].startswith(f"on rank 0: {tmp_path / 'state' / 'empty.txt'} holds no text"), refused
        job = {"data": {"path": str(tmp_path / "state" / "corpus.txt")}, "training": {"steps": 3}}
        assert daemon.ctl("submit", job=job)["result"]["id"] == "job-2"
        ended = daemon.wait_for(lambda e: e["event"] == "job_ended" and e["job"] == "job-2", timeout=300)
        assert ended["status"] == "done" and ended["step"] == 3
        assert daemon.ctl("status")["result"] | {"time": None, "pid": None} == {
            "state": "idle", "job": None, "ranks": 2, "time": None, "pid": None}
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
    assert [e["event"] for e in daemon.events].count("service_started") == 1  # no restart on the way
    assert [e["job"] for e in daemon.events if e["event"] == "job_refused"] == ["main", "job-1"]
