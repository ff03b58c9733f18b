"""sd_notify datagrams, as systemd would receive them."""

import os
import socket

import structlog

from cllm.coord.service.notify import Notifier, WatchdogGate


def test_messages_reach_the_notify_socket(notify_socket):
    path, sock = notify_socket
    n = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    n.ready()
    n.status("step 3 loss 2.5")
    n.watchdog()
    n.stopping()
    n.reloading()
    got = [sock.recv(256).decode() for _ in range(5)]
    assert got[:4] == ["READY=1", "STATUS=step 3 loss 2.5", "WATCHDOG=1", "STOPPING=1"]
    assert got[4].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert n.watchdog_interval == 2.0


def test_an_abstract_socket_is_addressed_by_its_at_sign():
    name = f"cllm-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(64) == b"READY=1"


def test_without_systemd_everything_is_a_no_op():
    n = Notifier.from_environ({})
    n.ready()
    n.watchdog()
    assert n.watchdog_interval is None


def test_a_missing_socket_is_logged_once_and_never_raises(tmp_path):
    n = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with structlog.testing.capture_logs() as logs:
        n.ready()
        n.status("x")
    assert [e["event"] for e in logs] == ["notify_failed"]


def test_the_watchdog_belongs_to_its_pid_only(notify_socket):
    path, _ = notify_socket
    assert Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}) \
        .watchdog_interval is None


def test_the_gate_beats_only_on_progress_and_at_most_once_an_interval(notify_socket):
    path, sock = notify_socket
    now = [100.0]
    gate = WatchdogGate(Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}), 0.5,
                        clock=lambda: now[0])
    gate.progress()
    gate.progress()  # too soon: no second datagram
    now[0] += 0.6
    gate.progress()
    sock.settimeout(0.2)
    got = []
    try:
        while True:
            got.append(sock.recv(64))
    except TimeoutError:
        pass
    assert got == [b"WATCHDOG=1", b"WATCHDOG=1"]
