"""sd_notify without libsystemd: datagrams to ``$NOTIFY_SOCKET``.

The watchdog beats only when training makes progress (``WatchdogGate.progress`` after each
step, or while the daemon is idle or paused on purpose), never from a timer of its own, so
systemd restarts a daemon whose training is stuck. Without ``NOTIFY_SOCKET`` every call is
a no-op and the daemon runs the same by hand.
"""

import os
import socket
import time

import structlog

log = structlog.get_logger("cllm.notify")


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: int | None):
        self.address = address
        self.watchdog_usec = watchdog_usec
        self.sock = None
        self.failed = False
        if address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ=os.environ) -> "Notifier":
        address = environ.get("NOTIFY_SOCKET") or None
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # the abstract namespace
        usec = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        enabled = usec and usec.isdigit() and (not pid or pid == str(os.getpid()))
        return cls(address, int(usec) if enabled else None)

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half of what systemd waits, or None without a watchdog."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def send(self, *fields: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as error:
            if not self.failed:
                self.failed = True
                log.warning("notify_failed", error=str(error), socket=self.address.replace("\0", "@"))

    def ready(self) -> None:
        self.send("READY=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def reloaded(self) -> None:
        self.send("READY=1")

    def watchdog(self) -> None:
        if self.watchdog_usec:
            self.send("WATCHDOG=1")


class WatchdogGate:
    """Beats the watchdog on progress, at most once per ``min_interval`` seconds."""

    def __init__(self, notifier: Notifier, min_interval: float, clock=time.monotonic):
        self.notifier = notifier
        self.min_interval = min_interval
        self.clock = clock
        self.last = None

    def progress(self) -> None:
        now = self.clock()
        if self.last is None or now - self.last >= self.min_interval:
            self.last = now
            self.notifier.watchdog()
