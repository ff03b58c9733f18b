"""The control socket under load: slow clients, a crowd from one user, a second server on a live socket."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cllm.coord.errors import UserError
from cllm.coord.service import control
from cllm.coord.service.control import MAX_CLIENTS, PER_UID, ControlServer
from cllm.protocol.control import ControlRequest, encode_request


async def answer(request):
    return {"command": request.command}


@pytest.fixture
async def server():
    directory = Path(tempfile.mkdtemp(dir="/tmp"))
    os.chmod(directory, 0o755)
    served = ControlServer(directory / "c.sock", answer, "nogroup")
    await served.start()
    yield served
    await served.close()


async def ask(path: Path, command="status", timeout=5.0) -> dict:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(encode_request(ControlRequest(1, command, {})))
    await writer.drain()
    try:
        return json.loads(await asyncio.wait_for(reader.readline(), timeout))
    finally:
        writer.close()


async def dribble(path: Path, stop: asyncio.Event) -> None:
    """A client that sends a valid request at 10 bytes a second, reconnecting whenever it is dropped."""
    line = encode_request(ControlRequest(2, "status", {}))
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
            for i in range(len(line)):
                if stop.is_set() or reader.at_eof():
                    break
                writer.write(line[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0.1)
            writer.close()
        except (ConnectionError, OSError):
            await asyncio.sleep(0.05)


async def test_slow_clients_cannot_lock_the_operator_out(server):
    stop = asyncio.Event()
    crowd = [asyncio.create_task(dribble(server.path, stop)) for _ in range(MAX_CLIENTS + 8)]
    try:
        await asyncio.sleep(1.0)  # every slot taken by a dribbler
        for _ in range(5):
            started = time.monotonic()
            reply = await ask(server.path)
            assert reply["ok"] and reply["result"] == {"command": "status"}
            assert time.monotonic() - started < 2.0
    finally:
        stop.set()
        await asyncio.gather(*crowd)


CROWD = """
import json, os, socket, sys, time
os.setgid(65534); os.setuid(65534)
held = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    held.append(s)
time.sleep(0.5)
busy = 0
for s in held:
    s.setblocking(False)
    try:
        busy += b'"busy"' in s.recv(4096)
    except BlockingIOError:
        pass
print(busy, flush=True)
time.sleep(float(sys.argv[3]))
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another member of the socket's group")
async def test_a_group_member_is_bounded_per_uid_and_the_operator_keeps_a_slot(server):
    crowd = await asyncio.create_subprocess_exec(sys.executable, "-c", CROWD, str(server.path), str(MAX_CLIENTS), "3",
                                                 stdout=subprocess.PIPE)
    try:
        busy = int(await asyncio.wait_for(crowd.stdout.readline(), 30))
        assert busy == MAX_CLIENTS - PER_UID  # the rest of that user's connections were refused at once
        reply = await ask(server.path)
        assert reply["ok"]
    finally:
        await crowd.wait()


async def test_a_client_that_sends_nothing_is_dropped_at_the_read_deadline(server, monkeypatch):
    monkeypatch.setattr(control, "READ_TIMEOUT", 0.3)
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
    assert reply["error"]["code"] == "timeout" and await reader.read() == b""
    writer.close()


async def test_a_second_server_refuses_a_live_socket_and_replaces_a_dead_one(server):
    second = ControlServer(server.path, answer)
    with pytest.raises(UserError, match="another daemon is listening"):
        await second.start()
    assert (await ask(server.path))["ok"]  # the first one is still reachable
    dead = server.path.with_name("dead.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(dead))  # a socket file nobody listens on: left by a killed daemon
    third = ControlServer(dead, answer)
    await third.start()
    try:
        assert (await ask(dead))["ok"]
    finally:
        await third.close()
