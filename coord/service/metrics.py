"""Optional Prometheus text metrics on a loopback address (``[metrics] enabled = true``).

prometheus-client (the ``metrics`` extra) is imported only when metrics are on. Each
``Metrics`` has its own registry.
"""

import math
import time

from ..errors import UserError

STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, address: str, port: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.address, self.port = address, port
        self.registry = CollectorRegistry()
        r = self.registry
        self.steps = Counter("cllm_steps", "optimizer steps taken", registry=r)
        self.tokens = Counter("cllm_tokens", "training tokens processed", registry=r)
        self.loss = Gauge("cllm_loss", "training loss of the last step", registry=r)
        self.val_loss = Gauge("cllm_val_loss", "the last validation loss", registry=r)
        self.tokens_per_s = Gauge("cllm_tokens_per_second", "training tokens per second of the last step", registry=r)
        self.step_seconds = Histogram("cllm_step_seconds", "wall time of a step", buckets=STEP_BUCKETS, registry=r)
        self.workers = Gauge("cllm_workers", "worker threads", registry=r)
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

    def checkpoint_saved(self, timestamp: float | None = None) -> None:
        self.last_checkpoint.set(time.time() if timestamp is None else timestamp)
