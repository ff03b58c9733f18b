"""`cllm ctl`: steer a running daemon through its control socket."""

import os
import sys
from pathlib import Path

from ..errors import UserError
from ..nodezero import MAX_WORKERS
from .ctl_view import show
from .options import positive_float

CTL_COMMANDS = ("status", "pause", "resume", "checkpoint", "stop", "reload", "workers", "stats", "jobs", "submit",
                "cancel")


def add_parser(commands) -> None:
    p = commands.add_parser("ctl", help="steer a running daemon through its control socket")
    p.add_argument("command", choices=CTL_COMMANDS)
    p.add_argument("argument", nargs="?", help="workers: the count; submit: a job's TOML file; cancel: a job id")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", type=Path, metavar="PATH",
                       help="the daemon's control socket (default: $RUNTIME_DIRECTORY/control.sock under systemd, "
                            "else $XDG_RUNTIME_DIR/cllm/control.sock, else /run/cllm/control.sock)")
    where.add_argument("--config", type=Path, metavar="FILE", help="the daemon's configuration, to find its socket")
    p.add_argument("--json", action="store_true", help="print the reply as JSON instead of for reading")
    p.add_argument("--timeout", type=positive_float, default=900.0, metavar="SECONDS",
                   help="seconds to wait for the answer")
    p.set_defaults(run=run)


def ctl_args(command: str, argument) -> dict:
    import tomllib

    needs = {"workers": "a worker count", "submit": "a job file", "cancel": "a job id"}
    if command not in needs:
        if argument is not None:
            raise UserError(f"'{command}' takes no argument")
        return {}
    if argument is None:
        raise UserError(f"'{command}' needs {needs[command]}")
    if command == "workers":
        if not argument.isdigit() or not 0 < int(argument) <= MAX_WORKERS:
            raise UserError(f"the worker count must be a whole number from 1 to {MAX_WORKERS} (at most "
                            f"{MAX_WORKERS} workers), got {argument!r}")
        return {"count": int(argument)}
    if command == "cancel":
        return {"id": argument}
    try:
        return {"job": tomllib.loads(Path(argument).read_text())}
    except OSError as error:
        raise UserError(f"cannot read {argument}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise UserError(f"{argument} is not valid TOML: {error or 'nested too deeply'}") from None


def run(args) -> int:
    import json
    import socket

    from cllm.protocol.control import ControlRequest, decode_reply, encode_request
    from cllm.protocol.wire import WireError

    request = ControlRequest(id=os.getpid(), command=args.command, args=ctl_args(args.command, args.argument))
    path = socket_path(args)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(args.timeout)
        try:
            sock.connect(str(path))
            sock.sendall(encode_request(request))
            reply = sock.makefile("rb").readline()
        except (FileNotFoundError, ConnectionRefusedError):
            raise UserError(f"no daemon answers at {path}; is 'cllm serve' running? (else give its --socket or "
                            "--config)") from None
        except TimeoutError:
            raise UserError(f"no answer from {path} within {args.timeout:g}s") from None
        except OSError as error:
            raise UserError(f"cannot talk to {path}: {error.strerror or error}") from None
    body = decode_reply(reply)
    if isinstance(body, WireError) or not reply:
        raise UserError(f"the daemon at {path} sent no valid reply")
    if not body["ok"]:
        print(f"cllm ctl: {args.command} refused: {body['error']['detail']}", file=sys.stderr)
        return 1
    print(json.dumps(body["result"], indent=2) if args.json else show(args.command, body["result"]))
    return 0


def socket_path(args) -> Path:
    """--socket, the socket of --config's daemon, or the default: the one ``cllm serve`` uses when its
    configuration names none, or the system daemon's (/run/cllm) when only that one is there."""
    from ..service.config import SYSTEM_SOCKET, default_socket, load_config

    if args.socket is not None:
        return args.socket
    if args.config is not None:
        return load_config(args.config).service.socket
    path = default_socket()
    return SYSTEM_SOCKET if not path.exists() and SYSTEM_SOCKET.exists() else path
