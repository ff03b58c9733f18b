"""The control channel's requests and replies, one JSON object per line, versioned like messages.

    {"v": 1, "id": 7, "command": "workers", "args": {"count": 4}}
    {"v": 1, "id": 7, "ok": true, "result": {...}}
    {"v": 1, "id": 7, "ok": false, "error": {"code": "bad_args", "detail": "..."}}

The daemon turns each request into the protocol's messages at HIGH or CRITICAL priority
(``stop`` is SHUTDOWN_REQUEST, ``workers`` CHILD_SPAWN or CHILD_TERMINATE, ``stats``
STATS_REQUEST, ``checkpoint`` a checkpoint TWIN_PRIME_HIT); ``decode_request`` never raises.
"""

import json
from dataclasses import dataclass

from .wire import MAX_LINE_BYTES, VERSION, WireError

# command -> {argument: type}
COMMANDS = {
    "status": {},
    "pause": {},
    "resume": {},
    "checkpoint": {},
    "stop": {},
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
    body = {"v": VERSION, "id": request_id, "ok": error is None}
    if error is None:
        body["result"] = result
    else:
        body["error"] = {"code": error.code, "detail": error.detail}
    return (json.dumps(body, separators=(",", ":"), allow_nan=False, default=str) + "\n").encode()


def decode_reply(line: bytes) -> dict | WireError:
    try:
        body = json.loads(line)
    except ValueError as error:
        return WireError("malformed", f"not JSON: {error}")
    if not isinstance(body, dict) or "ok" not in body:
        return WireError("malformed", "a reply is an object with 'ok'")
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
    if command not in COMMANDS:
        return WireError("unknown_command", f"{command!r} is not one of {', '.join(COMMANDS)}")
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
