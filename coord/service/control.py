"""The daemon's control socket: a Unix socket, one request and one reply per line.

Only the service's own user, root, or members of the configured group get in (checked
with the peer's credentials, SO_PEERCRED); anyone else is refused and logged. Each client
is served by its own task with a read timeout and a line limit, so a slow or malformed
client gets an error reply or a closed connection and never holds up another client or
the training.
"""

import asyncio
import grp
import os
import pwd
import socket
import struct

import structlog

from cllm.protocol.control import decode_request, encode_reply
from cllm.protocol.wire import MAX_LINE_BYTES, WireError

from ..errors import UserError

log = structlog.get_logger("cllm.control")

READ_TIMEOUT = 10.0  # seconds a client may take to send a request line
MAX_CLIENTS = 32


def peer_credentials(sock: socket.socket) -> tuple:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def allowed(uid: int, gid: int, group: str) -> bool:
    if uid in (0, os.getuid()):
        return True
    if not group:
        return False
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        return False
    if gid == entry.gr_gid:
        return True
    try:
        return pwd.getpwuid(uid).pw_name in entry.gr_mem
    except KeyError:
        return False


class ControlServer:
    """Serves ``handler(request) -> result`` (awaitable) on ``path``; a UserError from the handler
    becomes an error reply."""

    def __init__(self, path, handler, group: str = "", answer_timeout: float = 600.0):
        self.path = path
        self.handler = handler
        self.group = group
        self.answer_timeout = answer_timeout
        self.server = None
        self.clients = set()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if not self.path.is_socket():
                raise UserError(f"{self.path} exists and is not a socket; remove it or set [service] socket")
            self.path.unlink()  # a stale socket of a previous run
        old_umask = os.umask(0o117)  # the socket is created 0660
        try:
            self.server = await asyncio.start_unix_server(self.serve, path=str(self.path), limit=MAX_LINE_BYTES)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o660)
        if self.group:
            os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
        log.info("control_listening", socket=str(self.path))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self.clients):
                task.cancel()
            await asyncio.gather(*self.clients, return_exceptions=True)
            await self.server.wait_closed()
            self.path.unlink(missing_ok=True)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.clients.add(task)
        try:
            await self.conversation(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.clients.discard(task)
            writer.close()

    async def conversation(self, reader, writer) -> None:
        pid, uid, gid = peer_credentials(writer.get_extra_info("socket"))
        if not allowed(uid, gid, self.group):
            log.warning("control_refused", pid=pid, uid=uid, gid=gid)
            writer.write(encode_reply(0, error=WireError("forbidden", "this user may not control the daemon")))
            await writer.drain()
            return
        if len(self.clients) > MAX_CLIENTS:
            writer.write(encode_reply(0, error=WireError("busy", f"more than {MAX_CLIENTS} clients; try again")))
            await writer.drain()
            return
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            except TimeoutError:
                writer.write(encode_reply(0, error=WireError("timeout", f"no request within {READ_TIMEOUT:g}s")))
                await writer.drain()
                return
            except (ValueError, asyncio.LimitOverrunError):
                writer.write(encode_reply(0, error=WireError("oversized", f"a request is at most {MAX_LINE_BYTES} "
                                                                          "bytes")))
                await writer.drain()
                return
            if not line:
                return
            request = decode_request(line.strip())
            if isinstance(request, WireError):
                log.warning("control_bad_request", pid=pid, code=request.code, detail=request.detail)
                writer.write(encode_reply(0, error=request))
                await writer.drain()
                continue
            writer.write(await self.answer(request))
            await writer.drain()

    async def answer(self, request) -> bytes:
        log.info("control_request", command=request.command, id=request.id)
        try:
            result = await asyncio.wait_for(self.handler(request), self.answer_timeout)
        except UserError as error:
            return encode_reply(request.id, error=WireError("refused", str(error)))
        except TimeoutError:
            return encode_reply(request.id, error=WireError("timeout", "no answer within the step timeout"))
        except Exception as error:  # the daemon keeps running; the client learns what happened
            log.error("control_failed", command=request.command, error_type=type(error).__name__, error=str(error))
            return encode_reply(request.id, error=WireError("failed", f"{type(error).__name__}: {error}"))
        return encode_reply(request.id, result)
