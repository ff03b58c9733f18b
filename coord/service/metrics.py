"""Optional Prometheus text metrics on a loopback address (``[metrics] enabled = true``).

prometheus-client (the ``metrics`` extra) is imported only when metrics are on. Each
``Metrics`` has its own registry; the README lists every metric with its type and unit.
Everything is set from the daemon's event loop: the HTTP server's thread only reads.
"""

import math
import time

from ..build import python_version, version
from ..errors import UserError
from .jobs import STATUSES

STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, address: str, port: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

        self.address, self.port = address, port
        self.registry = CollectorRegistry()
        r = self.registry
        Info("cllm_build", "the CLLM version and the Python running it", registry=r).info(
            {"version": version(), "python": python_version()})
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self.steps = Counter("cllm_steps", "optimizer steps taken by this process", registry=r)
        self.tokens = Counter("cllm_tokens", "training tokens processed by this process", registry=r)
        self.step = Gauge("cllm_step", "the run's global optimizer step (continues across resumes)", registry=r)
        self.epoch = Gauge("cllm_epoch", "the epoch of the run's last step, from 0", registry=r)
        self.loss = Gauge("cllm_loss", "training loss of the last step", registry=r)
        self.val_loss = Gauge("cllm_val_loss", "the last validation loss", registry=r)
        self.tokens_per_s = Gauge("cllm_tokens_per_second", "training tokens per second of the last step", registry=r)
        self.step_seconds = Histogram("cllm_step_seconds", "wall time of a step", buckets=STEP_BUCKETS, registry=r)
        self.workers = Gauge("cllm_workers", "worker threads", registry=r)
        self.paused = Gauge("cllm_paused", "1 while nothing trains until an operator resumes (a paused run or job)",
                            registry=r)
        self.job = Gauge("cllm_job_info", "1 for the job in progress (or paused), by id", ["id"], registry=r)
        self.jobs = Gauge("cllm_jobs", "jobs in the queue, by status", ["status"], registry=r)
        self.last_checkpoint = Gauge("cllm_last_checkpoint_timestamp_seconds", "when the last checkpoint was written",
                                     registry=r)
        self.last_checkpoint.set(math.nan)
        age = Gauge("cllm_checkpoint_age_seconds", "seconds since the last checkpoint", registry=r)
        age.set_function(lambda: time.time() - self.last_checkpoint._value.get())
        self.server = None

    def start(self) -> None:
        from prometheus_client import start_http_server

        try:
            started = start_http_server(self.port, addr=self.address, registry=self.registry)
        except OSError as error:
            raise UserError(f"metrics port {self.address}:{self.port} is not free ({error.strerror}); "
                            "set [metrics] port to a free one") from None
        self.server = started[0] if isinstance(started, tuple) else None

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def observe_step(self, loss: float, tokens: int, seconds: float) -> None:
        self.steps.inc()
        self.tokens.inc(tokens)
        self.loss.set(loss)
        self.tokens_per_s.set(tokens / seconds if seconds > 0 else 0.0)
        self.step_seconds.observe(seconds)

    def observe_eval(self, val_loss: float) -> None:
        self.val_loss.set(val_loss)

    def set_workers(self, count: int) -> None:
        self.workers.set(count)

    def follow(self, status: dict, jobs: list) -> None:
        """The daemon's state as `cllm ctl status` and `jobs` tell it: step, epoch, paused, the job, the queue."""
        if "step" in status:
            self.step.set(status["step"])
        if "epoch" in status:
            self.epoch.set(status["epoch"])
        self.paused.set(1 if status["state"] == "paused" else 0)
        self.job.clear()
        if status.get("job") and status["state"] != "idle":
            self.job.labels(id=status["job"]).set(1)
        for name in STATUSES:
            self.jobs.labels(status=name).set(sum(1 for job in jobs if job["status"] == name))

    def checkpoint_saved(self, timestamp: float | None = None) -> None:
        self.last_checkpoint.set(time.time() if timestamp is None else timestamp)
