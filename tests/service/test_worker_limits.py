"""The worker count is bounded at every edge: the command line, the control socket, the file and a job."""

import subprocess
import sys

import pytest

from cllm.coord.errors import UserError
from cllm.coord.nodezero import MAX_WORKERS
from cllm.coord.service.config import load_config, merge_job

from .daemon import Daemon, write_config


def test_cllm_ctl_workers_above_the_maximum_is_one_line_before_any_connection(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cllm.coord", "ctl", "workers", str(MAX_WORKERS + 976), "--socket",
                          str(tmp_path / "none.sock")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert f"at most {MAX_WORKERS}" in line


def test_the_daemon_refuses_too_many_workers_and_keeps_training(tmp_path):
    daemon = Daemon(write_config(tmp_path))
    try:
        daemon.wait_for_step(3)
        refused = daemon.ctl("workers", count=2000)
        assert not refused["ok"] and str(MAX_WORKERS) in refused["error"]["detail"]
        before = daemon.ctl("status")["result"]
        assert before["workers"] == 2
        daemon.wait_for_step(before["step"] + 3)
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize("where", ["file", "job"])
def test_a_configuration_or_a_job_with_too_many_threads_is_refused(tmp_path, where):
    path = tmp_path / "cllm.toml"
    path.write_text("[training]\nthreads = 1100\n" if where == "file" else "")
    with pytest.raises(UserError, match=r"\[training\] threads must be an integer from 0 to 1024, got 1100"):
        merge_job(load_config(path, {}), {"training": {"threads": 1100}})
