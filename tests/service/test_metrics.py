"""Prometheus metrics served on loopback."""

import socket

import pytest

from cllm.coord.errors import UserError
from cllm.coord.service.metrics import Metrics

from .daemon import free_port, scrape


def test_metrics_follow_the_training():
    port = free_port()
    metrics = Metrics("127.0.0.1", port)
    metrics.start()
    try:
        assert scrape(port)["cllm_checkpoint_age_seconds"] != scrape(port)["cllm_checkpoint_age_seconds"]  # NaN
        for loss in (3.0, 2.5):
            metrics.observe_step(loss, 1000, 0.2)
        metrics.set_workers(2)
        metrics.observe_eval(2.7, 0.25)
        metrics.checkpoint_saved()
        got = scrape(port)
        assert got["cllm_steps_total"] == 2 and got["cllm_tokens_total"] == 2000
        assert got["cllm_loss"] == 2.5 and got["cllm_val_loss"] == 2.7 and got["cllm_workers"] == 2
        assert got["cllm_val_accuracy"] == 0.25
        assert got["cllm_tokens_per_second"] == pytest.approx(5000)
        assert got["cllm_step_seconds_count"] == 2 and got['cllm_step_seconds_bucket{le="0.25"}'] == 2
        assert 0 <= got["cllm_checkpoint_age_seconds"] < 5
    finally:
        metrics.stop()


def test_a_taken_port_is_refused_in_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserError, match="is not free"):
            Metrics("127.0.0.1", busy.getsockname()[1]).start()


def test_the_daemon_s_state_becomes_step_epoch_paused_job_and_queue_metrics():
    from cllm.coord.build import python_version, version

    port = free_port()
    metrics = Metrics("127.0.0.1", port)
    metrics.start()
    try:
        jobs = [{"id": "main", "status": "running"}, {"id": "job-1", "status": "queued"},
                {"id": "job-2", "status": "queued"}]
        metrics.follow({"state": "running", "job": "main", "step": 1200, "epoch": 3}, jobs)
        got = scrape(port)
        assert (got["cllm_step"], got["cllm_epoch"], got["cllm_paused"]) == (1200, 3, 0)
        assert got['cllm_job_info{id="main"}'] == 1
        assert got['cllm_jobs{status="queued"}'] == 2 and got['cllm_jobs{status="done"}'] == 0
        assert got[f'cllm_build_info{{python="{python_version()}",version="{version()}"}}'] == 1
        assert got["process_resident_memory_bytes"] > 0
        jobs[0]["status"] = "paused"
        metrics.follow({"state": "paused", "job": "main"}, jobs)  # a job paused by a full disk
        got = scrape(port)
        assert got["cllm_paused"] == 1 and got["cllm_step"] == 1200 and got['cllm_jobs{status="paused"}'] == 1
        metrics.follow({"state": "idle", "job": None}, jobs)
        assert not [name for name in scrape(port) if name.startswith("cllm_job_info")]
    finally:
        metrics.stop()
