"""SIGINT and SIGTERM, handled alike by `cllm train` and `cllm serve`.

The first signal asks for a clean stop: the step in flight finishes, a checkpoint is written, the
process exits 0. The second exits at once with status 128 + the signal's number; checkpoints are
written atomically, so nothing is left half-written.
"""

import asyncio
import os
import signal

import structlog

log = structlog.get_logger("cllm.signals")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """``with StopSignals(on_stop):`` inside a coroutine; ``on_stop(signal name)`` is called on the first."""

    def __init__(self, on_stop):
        self.on_stop = on_stop
        self.received = None
        self.installed = []

    def __enter__(self):
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            try:
                loop.add_signal_handler(sig, self.handle, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread: the caller's signals
                break
            self.installed.append(sig)
        return self

    def __exit__(self, *exc) -> None:
        loop = asyncio.get_running_loop()
        for sig in self.installed:
            loop.remove_signal_handler(sig)
        self.installed = []

    def handle(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self.received is not None:
            log.warning("stop_now", signal=name)
            os._exit(128 + sig)
        self.received = name
        log.info("stop_requested", signal=name)
        self.on_stop(name)
