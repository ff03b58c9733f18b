"""A step that never ends: the daemon fails the job with the reason instead of freezing, does not freeze
again after a restart, and honours SIGTERM while the step is stuck."""

import json
import signal
import time
from pathlib import Path

from cllm.coord.checkpoints.store import list_checkpoints

from .daemon import Daemon, write_config

# Loaded by the daemon's interpreter at start (sitecustomize): once the file named by CLLM_TEST_HANG
# exists, either a worker's kernels block for good ("worker"), or its evaluation does ("eval"), or Node Zero
# awaits an answer that never comes, outside any timeout of its own ("node").
HANG = '''
import asyncio, os, threading, time
from pathlib import Path
trigger, where = Path(os.environ["CLLM_TEST_HANG"]), os.environ["CLLM_TEST_HANG_WHERE"]
if where == "worker":
    import cllm.kernels.model as model
    real = model.forward_backward
    def forward_backward(*args):
        if trigger.exists():
            threading.Event().wait()
        return real(*args)
    model.forward_backward = forward_backward
elif where == "eval":
    from cllm.coord.nodezero.worker import WorkerKernels
    real = WorkerKernels.evaluate
    def evaluate(self, *args):
        if trigger.exists():
            threading.Event().wait()
        return real(self, *args)
    WorkerKernels.evaluate = evaluate
else:
    from cllm.coord.nodezero.node_zero import NodeZero
    real = NodeZero.step
    async def step(self, *args, **kwargs):
        if trigger.exists():
            await asyncio.Event().wait()
        return await real(self, *args, **kwargs)
    NodeZero.step = step
'''


def hanging_daemon(tmp_path: Path, where: str, step_timeout: float, eval_interval=0) -> tuple:
    config = write_config(tmp_path, checkpoint_interval=5, eval_interval=eval_interval)
    config.write_text(config.read_text().replace("step_timeout = 60", f"step_timeout = {step_timeout}"))
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HANG)
    trigger = tmp_path / "hang-now"
    env = {"PYTHONPATH": str(site), "CLLM_TEST_HANG": str(trigger), "CLLM_TEST_HANG_WHERE": where}
    return config, trigger, env


def test_a_step_that_times_out_fails_the_job_with_the_reason_and_a_restart_does_not_freeze(tmp_path):
    config, trigger, env = hanging_daemon(tmp_path, "worker", step_timeout=2)
    daemon = Daemon(config, env=env)
    try:
        daemon.wait_for_step(3)
        trigger.touch()
        failed = daemon.wait_for(lambda e: e["event"] == "job_failed", timeout=60)
        assert "timed out" in failed["error"]
        assert daemon.ctl("status")["result"]["state"] == "idle"  # still serving, not frozen
    finally:
        assert daemon.stop(timeout=60) == 0
    jobs = json.loads((tmp_path / "state" / "jobs.json").read_text())
    assert jobs[0]["status"] == "failed" and "timed out" in jobs[0]["detail"]
    again = Daemon(config, env=env)  # the trigger is still there: a rerun would hang again
    try:
        again.wait_for(lambda e: e["event"] == "service_ready")
        assert again.ctl("status")["result"]["state"] == "idle"
    finally:
        assert again.stop(timeout=60) == 0


def test_an_evaluation_that_times_out_fails_the_job_not_the_daemon(tmp_path):
    config, trigger, env = hanging_daemon(tmp_path, "eval", step_timeout=2, eval_interval=4)
    daemon = Daemon(config, env=env)
    try:
        daemon.wait_for(lambda e: e["event"] == "eval")
        trigger.touch()
        failed = daemon.wait_for(lambda e: e["event"] == "job_failed", timeout=60)
        assert "timed out" in failed["error"] and "validation" in failed["error"]
        assert daemon.ctl("status")["result"]["state"] == "idle"  # before: a traceback, exit 1, and a restart loop
    finally:
        assert daemon.stop(timeout=60) == 0


def test_sigterm_is_honoured_while_a_step_is_stuck(tmp_path):
    config, trigger, env = hanging_daemon(tmp_path, "node", step_timeout=2)
    daemon = Daemon(config, env=env)
    daemon.wait_for(lambda e: e["event"] == "checkpoint_saved")
    trigger.touch()
    time.sleep(1.0)  # the step in flight is stuck now, with nothing to time it out
    sent = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    daemon.process.wait(60)
    assert time.monotonic() - sent < 15
    daemon.wait_for(lambda e: e["event"] == "stop_forced")
    last = list_checkpoints(tmp_path / "state" / "jobs" / "main")[-1]
    trigger.unlink()
    again = Daemon(config, env=env)
    try:
        resumed = again.wait_for(lambda e: e["event"] == "resumed")
        assert resumed["checkpoint"] == str(last)
        again.wait_for_step(resumed["step"] + 3)
    finally:
        assert again.stop() == 0
