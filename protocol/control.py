"""The control channel's requests and replies, one JSON object per line, versioned like messages.

    {"v": 1, "id": 7, "command": "workers", "args": {"count": 4}}
    {"v": 1, "id": 7, "ok": true, "result": {...}}
    {"v": 1, "id": 7, "ok": false, "error": {"code": "bad_args", "detail": "..."}}

The daemon turns each request into the protocol's messages at HIGH or CRITICAL priority
(``stop`` is SHUTDOWN_REQUEST, ``workers`` CHILD_SPAWN or CHILD_TERMINATE, ``stats``
STATS_REQUEST, ``checkpoint`` a checkpoint TWIN_PRIME_HIT); ``decode_request`` never raises.
"""

import json
import math
from dataclasses import dataclass

from .wire import MAX_LINE_BYTES, VERSION, WireError

# command -> {argument: type}
COMMANDS = {
    "status": {},
    "pause": {},
    "resume": {},
    "checkpoint": {},
    "stop": {},
    "reload": {},
    "workers": {"count": int},
    "stats": {},
    "jobs": {},
    "submit": {"job": dict},
    "cancel": {"id": str},
}


@dataclass(frozen=True)
class ControlRequest:
    id: int
    command: str
    args: dict


def encode_request(request: ControlRequest) -> bytes:
    return (json.dumps({"v": VERSION, "id": request.id, "command": request.command, "args": request.args},
                       separators=(",", ":")) + "\n").encode()


def encode_reply(request_id: int, result=None, error: WireError | None = None) -> bytes:
    """One reply line; a float that is not finite (a loss gone to NaN) travels as null, as strict JSON has it."""
    body = {"v": VERSION, "id": request_id, "ok": error is None}
    if error is None:
        body["result"] = finite(result)
    else:
        body["error"] = {"code": error.code, "detail": error.detail}
    return (json.dumps(body, separators=(",", ":"), allow_nan=False, default=str) + "\n").encode()


def finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def decode_reply(line: bytes) -> dict | WireError:
    """A reply ({"ok": true, "result": ...} or {"ok": false, "error": {"code", "detail"}}), or why it is not one."""
    try:
        body = json.loads(line)
    except (ValueError, RecursionError) as error:  # a UnicodeDecodeError is a ValueError
        return WireError("malformed", f"not JSON: {error}")
    if not isinstance(body, dict) or type(body.get("ok")) is not bool:
        return WireError("malformed", "a reply is an object with 'ok' true or false")
    if body["ok"] and "result" not in body:
        return WireError("malformed", "a reply with 'ok' true carries a 'result'")
    error = body.get("error")
    if not body["ok"] and not (isinstance(error, dict) and type(error.get("code")) is str
                               and type(error.get("detail")) is str):
        return WireError("malformed", "a reply with 'ok' false carries an 'error' with 'code' and 'detail'")
    return body


def decode_request(line: bytes) -> ControlRequest | WireError:
    """A request, or the reason it is not one."""
    if len(line) > MAX_LINE_BYTES:
        return WireError("oversized", f"a request is at most {MAX_LINE_BYTES} bytes")
    try:
        body = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        return WireError("malformed", f"not a JSON line: {error}")
    if not isinstance(body, dict):
        return WireError("malformed", "a request is a JSON object")
    if body.get("v") != VERSION or type(body.get("v")) is not int:
        return WireError("bad_version", f"version {body.get('v')!r} is not {VERSION}")
    request_id, command, args = body.get("id"), body.get("command"), body.get("args", {})
    if type(request_id) is not int or request_id < 0:
        return WireError("bad_field", "'id' must be a non-negative integer")
    if set(body) - {"v", "id", "command", "args"}:
        return WireError("bad_field", f"unknown fields {sorted(set(body) - {'v', 'id', 'command', 'args'})}")
    if type(command) is not str or command not in COMMANDS:
        return WireError("unknown_command", f"{str(command)[:64]!r} is not one of {', '.join(COMMANDS)}")
    if not isinstance(args, dict):
        return WireError("bad_args", "'args' must be an object")
    schema = COMMANDS[command]
    if set(args) != set(schema):
        return WireError("bad_args", f"{command} takes {sorted(schema) or 'no arguments'}, got {sorted(args)}")
    for name, kind in schema.items():
        value = args[name]
        if type(value) is not kind or (kind is int and value <= 0) or (kind is str and not value):
            return WireError("bad_args", f"{command}: {name} must be a {'positive integer' if kind is int else kind.__name__}")
    return ControlRequest(request_id, command, args)
