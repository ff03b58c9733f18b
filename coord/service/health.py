"""The daemon's health monitor: a worker without progress, a loss that stops being finite, memory.

Each finding is logged once with what was done about it: a stalled worker is reported (the
step's own timeout then fails the step); a non-finite loss is reported (the trainer has
already kept it from the weights); memory above the limit stops the run after the step in
flight, with a checkpoint, so that a restart continues from there.
"""

import asyncio
import math
import os
import time

import structlog

from ..nodezero.states import SphereState

log = structlog.get_logger("cllm.health")

CHECK_EVERY = 1.0


def resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class HealthMonitor:
    def __init__(self, node, stall_timeout: float, memory_limit_mb: int, on_memory):
        self.node = node
        self.stall_timeout = stall_timeout
        self.memory_limit = memory_limit_mb * 2**20
        self.on_memory = on_memory
        self.reported = set()

    def loss(self, step: int, value: float) -> None:
        if not math.isfinite(value):
            log.warning("health_loss_not_finite", step=step, loss=value, action="update skipped")

    def check(self) -> None:
        now = time.monotonic()
        for leaf in self.node.workers:
            stuck = leaf.state is SphereState.PROCESSING and now - leaf.machine.since > self.stall_timeout
            if stuck and leaf.id not in self.reported:
                self.reported.add(leaf.id)
                log.warning("health_worker_stalled", sphere=leaf.id, seconds=round(now - leaf.machine.since, 1),
                            action="reported; the step fails at its timeout")
            elif not stuck:
                self.reported.discard(leaf.id)
        if self.memory_limit and "memory" not in self.reported:
            rss = resident_bytes()
            if rss > self.memory_limit:
                self.reported.add("memory")
                log.error("health_memory_high", resident_mb=rss // 2**20, limit_mb=self.memory_limit // 2**20,
                          action="checkpoint and stop after this step")
                self.on_memory()

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY)
            self.check()
