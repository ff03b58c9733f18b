"""Fixtures shared by the tests of every layer."""

import os
import socket
import tempfile

import pytest


@pytest.fixture
def notify_socket():
    """A datagram socket standing in for systemd's notify socket: (path, socket)."""
    path = os.path.join(tempfile.mkdtemp(dir="/tmp"), "notify")  # AF_UNIX paths must be short
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()
