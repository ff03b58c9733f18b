"""The daemon's control socket: a Unix socket, one request and one reply per line.

Only the service's own user, root, or members of the configured group get in (checked
with the peer's credentials, SO_PEERCRED); anyone else is refused and logged. Each client
is served by its own task with a read deadline and a line limit, so a slow or malformed
client gets an error reply or a closed connection and never holds up another client or
the training. At most MAX_CLIENTS connections are open at once; a group member may hold
PER_UID of them and none of the last OPERATOR_SLOTS, which are the operator's (root or the
service's user). An operator who finds every place taken displaces the connection that has
waited longest without sending a whole request: slow clients cannot lock the operator out.

A server does not take over a socket another one is listening on: a second daemon started
on the same socket is refused, and one that stops removes the socket only if it is its own.
"""

import asyncio
import grp
import os
import pwd
import socket
import struct
import time
from dataclasses import dataclass, field

import structlog

from cllm.protocol.control import decode_request, encode_reply
from cllm.protocol.wire import MAX_LINE_BYTES, WireError

from ..errors import UserError

log = structlog.get_logger("cllm.control")

READ_TIMEOUT = 10.0  # seconds a client may take to send a request line
MAX_CLIENTS = 32
PER_UID = 8  # connections one group member may hold
OPERATOR_SLOTS = 4  # the last places, kept for root and the service's user


def peer_credentials(sock: socket.socket) -> tuple:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


async def send(writer, line: bytes) -> None:
    """Write a reply; a client that does not read it within the deadline is dropped (TimeoutError)."""
    writer.write(line)
    await asyncio.wait_for(writer.drain(), READ_TIMEOUT)


def listening(path) -> bool:
    """Whether a server accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError as error:
            raise UserError(f"cannot tell whether another daemon is listening on {path} ({error.strerror}); "
                            "check the socket's owner and mode") from None
    return True


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


@dataclass
class Client:
    pid: int
    uid: int
    operator: bool
    waiting_since: float | None = field(default_factory=time.monotonic)  # None while a request is answered


class ControlServer:
    """Serves ``handler(request) -> result`` (awaitable) on ``path``; a UserError from the handler
    becomes an error reply."""

    def __init__(self, path, handler, group: str = "", answer_timeout: float = 600.0):
        self.path = path
        self.handler = handler
        self.group = group
        self.answer_timeout = answer_timeout
        self.server = None
        self.clients = {}  # task -> Client
        self.inode = None  # the socket file this server made

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if not self.path.is_socket():
                raise UserError(f"{self.path} exists and is not a socket; remove it or set [service] socket")
            if listening(self.path):
                raise UserError(f"another daemon is listening on {self.path}; stop it, or give this one another "
                                "[service] socket and state_dir")
            self.path.unlink()  # a stale socket of a daemon that was killed
        old_umask = os.umask(0o117)  # the socket is created 0660
        try:
            self.server = await asyncio.start_unix_server(self.serve, path=str(self.path), limit=MAX_LINE_BYTES)
        except OSError as error:
            raise UserError(f"cannot listen on {self.path} ({error.strerror}); set [service] socket to a path the "
                            "service may create") from None
        finally:
            os.umask(old_umask)
        self.inode = self.path.stat().st_ino
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
            try:
                if self.path.stat().st_ino == self.inode:  # never another server's socket
                    self.path.unlink()
            except FileNotFoundError:
                pass

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        try:
            pid, uid, gid = peer_credentials(writer.get_extra_info("socket"))
            if not allowed(uid, gid, self.group):
                log.warning("control_refused", pid=pid, uid=uid, gid=gid)
                await self.refuse(writer, "forbidden", "this user may not control the daemon")
                return
            client = Client(pid, uid, operator=uid in (0, os.getuid()))
            if not self.admit(client):
                log.warning("control_busy", pid=pid, uid=uid)
                await self.refuse(writer, "busy", f"too many connections ({len(self.clients)} open); try again")
                return
            self.clients[task] = client
            await self.conversation(reader, writer, client)
        except (ConnectionError, TimeoutError, asyncio.CancelledError):  # gone, not reading, or displaced
            pass
        finally:
            self.clients.pop(task, None)
            writer.close()

    def admit(self, client: Client) -> bool:
        """Whether a new connection gets a place; an operator may displace the longest-waiting idle one."""
        if not client.operator:
            mine = sum(1 for c in self.clients.values() if c.uid == client.uid)
            return mine < PER_UID and len(self.clients) < MAX_CLIENTS - OPERATOR_SLOTS
        if len(self.clients) < MAX_CLIENTS:
            return True
        waiting = [(c.waiting_since, task) for task, c in self.clients.items() if c.waiting_since is not None]
        if not waiting:
            return False
        _, victim = min(waiting, key=lambda pair: pair[0])
        log.info("control_displaced", uid=self.clients.pop(victim).uid)
        victim.cancel()
        return True

    async def refuse(self, writer, code: str, detail: str) -> None:
        await send(writer, encode_reply(0, error=WireError(code, detail)))

    async def conversation(self, reader, writer, client: Client) -> None:
        while True:
            client.waiting_since = time.monotonic()
            try:
                line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            except TimeoutError:
                await self.refuse(writer, "timeout", f"no request within {READ_TIMEOUT:g}s")
                return
            except (ValueError, asyncio.LimitOverrunError):
                await self.refuse(writer, "oversized", f"a request is at most {MAX_LINE_BYTES} bytes")
                return
            if not line:
                return
            client.waiting_since = None
            request = decode_request(line.strip())
            if isinstance(request, WireError):
                log.warning("control_bad_request", pid=client.pid, code=request.code, detail=request.detail)
                await send(writer, encode_reply(0, error=request))
                continue
            await send(writer, await self.answer(request))

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
