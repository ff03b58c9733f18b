"""SIGINT and SIGTERM, handled alike by `cllm train` and `cllm serve`.

The first signal asks for a clean stop: the step in flight finishes, a checkpoint is written, the
process exits 0. The second exits at once with status 128 + the signal's number; checkpoints are
written atomically, so nothing is left half-written. A first signal is honoured even when the step
in flight is stuck: if the clean stop has not happened within ``grace`` seconds, the process exits
as on a second one (the last checkpoint written is where the run resumes). SIGUSR1 and SIGUSR2, whose default is to
kill the process on the spot, are ignored with a log line.
"""

import asyncio
import os
import signal
import sys
import threading

import structlog

log = structlog.get_logger("cllm.signals")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
IGNORED = (signal.SIGUSR1, signal.SIGUSR2)
POOL_THREADS = "sphere"  # the name prefix of Node Zero's pool threads (coord/nodezero/node_zero.py)


class StopSignals:
    """``with StopSignals(on_stop, grace):`` inside a coroutine; ``on_stop(signal name)`` is called on the first."""

    def __init__(self, on_stop, grace: float):
        self.on_stop = on_stop
        self.grace = grace
        self.received = None
        self.installed = []
        self.timer = None

    def __enter__(self):
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS + IGNORED:
            try:
                loop.add_signal_handler(sig, self.handle if sig in STOP_SIGNALS else ignore, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread: the caller's signals
                break
            self.installed.append(sig)
        return self

    def __exit__(self, *exc) -> None:
        loop = asyncio.get_running_loop()
        for sig in self.installed:
            loop.remove_signal_handler(sig)
        self.installed = []
        if self.timer is not None:
            self.timer.cancel()

    def handle(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self.received is not None:
            log.warning("stop_now", signal=name)
            os._exit(128 + sig)
        self.received = name
        log.info("stop_requested", signal=name)
        self.timer = threading.Timer(self.grace, self.force, (sig,))  # a thread: it fires even if the loop is stuck
        self.timer.daemon = True
        self.timer.start()
        self.on_stop(name)

    def force(self, sig: int) -> None:
        log.warning("stop_forced", signal=signal.Signals(sig).name, after_s=self.grace)
        sys.stdout.flush()
        os._exit(128 + sig)


def stop_grace(step_timeout: float) -> float:
    """Seconds a clean stop may take: the step in flight (at most ``step_timeout``), then the final
    evaluation and checkpoint."""
    return step_timeout + min(step_timeout, 60.0)


def leave(status: int) -> int:
    """Return ``status``, or, when a worker thread stuck in a kernel is still alive (its step failed by the
    timeout; it cannot be joined), end the process with it now instead of waiting for that thread."""
    if any(t.is_alive() for t in threading.enumerate() if t.name.startswith(POOL_THREADS)):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def ignore(sig: int) -> None:
    log.warning("signal_ignored", signal=signal.Signals(sig).name)
