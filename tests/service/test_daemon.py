"""The real daemon: ready, trains, answers, pauses, checkpoints, survives bad clients, stops and resumes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata


from cllm.coord.checkpoints.store import list_checkpoints

from .daemon import Daemon, free_port, scrape, write_config


def datagrams(sock, until, timeout=60.0):
    """Datagrams received until one satisfies ``until``."""
    got, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if until(got[-1]):
            return got
    raise AssertionError(f"no such datagram; got {got[-5:]}")


def test_the_daemon_trains_and_answers_its_operator(tmp_path, notify_socket):
    notify_path, notify = notify_socket
    daemon = Daemon(write_config(tmp_path), env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "2000000"})
    try:
        ready = datagrams(notify, lambda d: "READY=1" in d)
        assert any("READY=1" in d for d in ready)
        assert datagrams(notify, lambda d: d.startswith("STATUS=step"))
        assert datagrams(notify, lambda d: d == "WATCHDOG=1")
        daemon.wait_for_step(20)

        status = daemon.ctl("status")
        assert status["ok"], status
        assert status["result"]["state"] == "running" and status["result"]["step"] >= 20
        assert status["result"]["job"] == "main"

        paused = daemon.ctl("pause")
        assert paused["ok"] and paused["result"]["paused"]
        step = paused["result"]["step"]
        time.sleep(0.5)
        assert daemon.ctl("status")["result"]["step"] == step  # nothing moves while paused
        assert daemon.ctl("status")["result"]["state"] == "paused"
        assert daemon.ctl("resume")["ok"]
        daemon.wait_for_step(step + 10)

        saved = daemon.ctl("checkpoint")
        assert saved["ok"] and os.path.isdir(saved["result"]["checkpoint"])

        resized = daemon.ctl("workers", count=3)
        assert resized["ok"] and resized["result"]["workers"] == 3
        stats = daemon.ctl("stats")["result"]
        assert len(stats["children"]) == 3 and stats["tokens"] > 0
        assert daemon.ctl("status")["result"]["workers"] == 3
        assert daemon.ctl("stop")["ok"]  # as SIGTERM: after the step, with a checkpoint
        assert daemon.process.wait(60) == 0
        daemon.wait_for(lambda e: e["event"] == "service_stopped")
    finally:
        assert daemon.stop() == 0


def test_bad_clients_get_errors_and_training_goes_on(tmp_path):
    daemon = Daemon(write_config(tmp_path))
    try:
        daemon.wait_for_step(10)
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        slow.connect(str(daemon.socket))  # says nothing: must not block anyone
        answers = {}
        for name, line in [("garbage", b"\x00\xffnot json\n"), ("unknown", b'{"v":1,"id":3,"command":"explode"}\n'),
                           ("version", b'{"v":9,"id":3,"command":"status"}\n'),
                           ("args", b'{"v":1,"id":3,"command":"workers","args":{"count":-1}}\n'),
                           ("oversized", b"{" + b" " * 70_000 + b"}\n")]:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(30)
                sock.connect(str(daemon.socket))
                sock.sendall(line)
                answers[name] = json.loads(sock.makefile("rb").readline())
        assert all(not a["ok"] for a in answers.values())
        assert answers["garbage"]["error"]["code"] == "malformed"
        assert answers["unknown"]["error"]["code"] == "unknown_command"
        assert answers["version"]["error"]["code"] == "bad_version"
        assert answers["args"]["error"]["code"] == "bad_args"
        assert answers["oversized"]["error"]["code"] == "oversized"
        refused = daemon.ctl("cancel", id="no-such-job")
        assert not refused["ok"] and "no job 'no-such-job'" in refused["error"]["detail"]
        before = daemon.ctl("status")["result"]["step"]
        daemon.wait_for_step(before + 5)  # still training
        slow.close()
    finally:
        assert daemon.stop() == 0


def test_another_user_is_refused_and_logged(tmp_path):
    daemon = Daemon(write_config(tmp_path))
    try:
        daemon.wait_for(lambda e: e["event"] == "control_listening")
        assert oct(os.stat(daemon.socket).st_mode & 0o777) == "0o660"
        os.chmod(daemon.socket.parent, 0o755)
        os.chmod(daemon.socket, 0o666)  # let the file through so that the credentials check is what refuses
        # the daemon answers a stranger at once and hangs up: read that answer, whatever a send would meet
        script = ("import os, socket, sys; os.setgid(65534); os.setuid(65534); s = socket.socket(socket.AF_UNIX); "
                  "s.connect(sys.argv[1]); print(s.makefile().readline())")
        out = subprocess.run([sys.executable, "-c", script, str(daemon.socket)], capture_output=True, text=True,
                             timeout=60)
        reply = json.loads(out.stdout or out.stderr)
        assert not reply["ok"] and reply["error"]["code"] == "forbidden"
        daemon.wait_for(lambda e: e["event"] == "control_refused" and e["uid"] == 65534)
        assert daemon.ctl("status")["result"]["state"] in ("running", "idle")  # not stopped
    finally:
        assert daemon.stop() == 0


def test_sigterm_stops_within_a_step_and_a_restart_continues_the_same_curve(tmp_path):
    config = write_config(tmp_path, checkpoint_interval=1000)
    (tmp_path / "ref").mkdir()
    reference = Daemon(write_config(tmp_path / "ref", checkpoint_interval=1000))
    try:
        reference.wait_for_step(80)
    finally:
        reference.stop()
    expected = reference.steps()

    first = Daemon(config)
    first.wait_for_step(30)
    sent = time.monotonic()
    assert first.stop() == 0
    took = time.monotonic() - sent
    stopped = first.wait_for(lambda e: e["event"] == "checkpoint_saved")
    state = tmp_path / "state" / "jobs" / "main"
    assert [p.name for p in list_checkpoints(state)] == [f"checkpoint-{stopped['step']:08d}"]
    assert took < 30

    second = Daemon(config)
    try:
        resumed = second.wait_for(lambda e: e["event"] == "resumed")
        assert resumed["step"] == stopped["step"]  # nothing lost after a clean stop
        second.wait_for_step(80)
    finally:
        assert second.stop() == 0
    after = {s: loss for s, loss in second.steps().items() if s > stopped["step"]}
    assert after and all(after[s] == expected[s] for s in after if s in expected)


def test_a_second_signal_exits_at_once_and_leaves_the_last_checkpoint_whole(tmp_path):
    daemon = Daemon(write_config(tmp_path, checkpoint_interval=10))
    daemon.wait_for(lambda e: e["event"] == "checkpoint_saved")
    daemon.process.send_signal(signal.SIGTERM)
    daemon.process.send_signal(signal.SIGTERM)
    daemon.process.wait(60)
    from cllm.coord.checkpoints.store import load_checkpoint
    load_checkpoint(tmp_path / "state" / "jobs" / "main")  # loads: nothing half-written


def test_submitted_jobs_survive_a_restart_and_sighup_reloads(tmp_path):
    config = write_config(tmp_path)
    job = tmp_path / "job.toml"
    job.write_text("[training]\nsteps = 30\nlearning_rate = 1e-3\n")
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nlerning_rate = 1\n")
    daemon = Daemon(config)
    try:
        daemon.wait_for_step(5)
        env = {**os.environ}
        out = subprocess.run([sys.executable, "-m", "cllm.coord", "ctl", "submit", str(job), "--socket",
                              str(daemon.socket), "--json"], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["id"] == "job-1"
        refused = subprocess.run([sys.executable, "-m", "cllm.coord", "ctl", "submit", str(bad), "--socket",
                                  str(daemon.socket)], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "lerning_rate" in refused.stderr
        config.write_text(config.read_text().replace("eval_interval = 0", "eval_interval = 7"))
        daemon.process.send_signal(signal.SIGHUP)
        reloaded = daemon.wait_for(lambda e: e["event"] == "config_reloaded")
        assert "training.eval_interval" in reloaded["changed"]
        config.write_text(config.read_text().replace("checkpoint_interval = 50", "checkpoint_interval = 20"))
        out = subprocess.run([sys.executable, "-m", "cllm.coord", "ctl", "reload", "--socket", str(daemon.socket)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        changed, restart, applied = out.stdout.splitlines()
        assert changed.split() == ["changed", "training.checkpoint_interval", "50", "->", "20"]
        assert restart.split() == ["needs", "restart", "-"] and applied.startswith("in force from step")
        step = int(applied.split()[-1].replace(",", ""))
        saved = daemon.wait_for(lambda e: e["event"] == "checkpoint_saved" and e["step"] > step and not e["best"])
        assert saved["step"] % 20 == 0  # the new interval, from the step the reply named
    finally:
        assert daemon.stop() == 0
    again = Daemon(config)
    try:
        jobs = again.ctl("jobs")["result"]
        assert [(j["id"], j["status"]) for j in jobs] == [("main", "running"), ("job-1", "queued")]
        again.wait_for(lambda e: e["event"] == "resumed")
        assert again.ctl("cancel", id="main")["ok"]  # stops it after the step; the queued job runs next
        again.wait_for(lambda e: e["event"] == "job_ended" and e["job"] == "job-1", timeout=300)
        assert {j["id"]: j["status"] for j in again.ctl("jobs")["result"]} == {"main": "cancelled",
                                                                              "job-1": "done"}
        assert again.ctl("status")["result"]["state"] == "idle"
    finally:
        assert again.stop() == 0


def test_a_bad_configuration_is_refused_at_start(tmp_path):
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("num_heads = 2", "num_heads = 3"))
    out = subprocess.run([sys.executable, "-m", "cllm.coord", "serve", "--config", str(config)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "num_heads" in out.stderr


def test_prometheus_metrics_follow_the_daemon(tmp_path):
    port = free_port()
    config = write_config(tmp_path, checkpoint_interval=5)
    config.write_text(config.read_text() + f"\n[metrics]\nenabled = true\nport = {port}\n")
    daemon = Daemon(config)
    try:
        daemon.wait_for_step(20)
        values = scrape(port)
        assert values["cllm_steps_total"] >= 20 and values["cllm_workers"] == 2
        assert values["cllm_step"] >= 20 and values["cllm_epoch"] >= 0
        assert 0 <= values["cllm_checkpoint_age_seconds"] < 60
        assert values[f'cllm_build_info{{python="{sys.version.split()[0]}",version="{metadata.version("cllm")}"}}'] == 1
        assert values["process_resident_memory_bytes"] > 0 and values["process_cpu_seconds_total"] > 0
        assert values['cllm_job_info{id="main"}'] == 1 and values["cllm_paused"] == 0
        assert values['cllm_jobs{status="running"}'] == 1 and values['cllm_jobs{status="queued"}'] == 0
        assert daemon.ctl("pause")["ok"]
        deadline = time.monotonic() + 30
        while scrape(port)["cllm_paused"] != 1:
            assert time.monotonic() < deadline, "cllm_paused never became 1"
            time.sleep(0.2)
        assert daemon.ctl("resume")["ok"]
    finally:
        assert daemon.stop() == 0
    again = Daemon(config)
    try:
        saved = again.wait_for(lambda e: e["event"] == "resumed")["step"]
        assert saved >= 20 and again.wait_for(lambda e: e["event"] == "job_started")["step"] == saved
        values = scrape(port)
        assert values["cllm_step"] >= saved and values["cllm_steps_total"] <= values["cllm_step"] - saved + 1
        again.wait_for_step(saved + 3)
        assert scrape(port)["cllm_step"] >= saved + 3  # the run's step, not this process's count
    finally:
        assert again.stop() == 0
