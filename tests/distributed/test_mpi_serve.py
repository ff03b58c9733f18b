"""`cllm serve` under `mpiexec -n 2`: rank 0 is the daemon, the operator's requests take effect on both ranks."""

import os
import socket
import tempfile
import time

import numpy as np

from cllm.coord.checkpoints.store import load_checkpoint

from ..service.daemon import Daemon, write_config
from .mpirun import mpiexec_path


def notify_socket():
    path = os.path.join(tempfile.mkdtemp(dir="/tmp"), "notify")  # AF_UNIX paths must be short
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    return path, sock


def received(sock) -> list:
    got = []
    while True:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            return got


def test_the_daemon_on_two_ranks_is_steered_through_rank_0(tmp_path):
    config = write_config(tmp_path, checkpoint_interval=1000)
    config.write_text(config.read_text().replace("threads = 2", "threads = 1"))
    notify_path, notify = notify_socket()
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
