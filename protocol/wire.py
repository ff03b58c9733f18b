"""Newline-delimited JSON encoding of messages, version 1.

One message is one line:

    {"v":1,"type":"BATCH_START","priority":"NORMAL","id":7,"sender":0,"receiver":3,
     "ts":1718000000.25,"payload":{"step":12,...,"grad_segment":{"name":"grads",...}}}

Spheres inside one process pass ``Message`` objects and never encode them; the
encoding is for what crosses a process boundary, such as the daemon's control
socket. ``decode`` trusts nothing: it returns a ``WireError`` for any line that is
not a valid message and never raises. Floats must be finite (strict JSON).
"""

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Literal, get_args, get_origin, get_type_hints

from . import payloads
from .messages import BROADCAST, Message, MessageType, Priority

VERSION = 1
MAX_LINE_BYTES = 64 * 1024  # the 157-sphere tree's nested STATS_REPORT is about 25 KiB
MAX_DEPTH = 8  # records nested in records: a stats report of a tree 6 levels deep, with buffer refs
ENVELOPE = ("v", "type", "priority", "id", "sender", "receiver", "ts", "payload")


@dataclass(frozen=True, slots=True)
class WireError:
    """Why a line is not a message. ``code`` is one of: malformed (not UTF-8, not JSON, or
    not an object), oversized, bad_version, bad_field (the envelope), unknown_type, bad_payload."""

    code: str
    detail: str


def encode(message: Message) -> bytes:
    """The message as one line ending in b"\\n"; ValueError on a non-finite float or a line over the limit."""
    envelope = {
        "v": VERSION,
        "type": message.type.name,
        "priority": message.priority.name,
        "id": message.id,
        "sender": message.sender,
        "receiver": message.receiver,
        "ts": message.timestamp,
        "payload": dataclasses.asdict(message.payload),
    }
    line = json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode() + b"\n"
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(f"{message.type.name} encodes to {len(line)} bytes, over MAX_LINE_BYTES={MAX_LINE_BYTES}")
    return line


def decode(line: bytes) -> Message | WireError:
    """The message on ``line`` (trailing newline optional), or a WireError saying why there is none."""
    try:
        return _decode(line)
    except _Invalid as e:
        return WireError(*e.args)


class _Invalid(Exception):
    """Raised with (code, detail) anywhere inside decoding; decode turns it into a WireError."""


def _decode(line: bytes) -> Message:
    if len(line) > MAX_LINE_BYTES:
        raise _Invalid("oversized", f"{len(line)} bytes, over MAX_LINE_BYTES={MAX_LINE_BYTES}")
    try:
        obj = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise _Invalid("malformed", f"not UTF-8: {e.reason} at byte {e.start}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError, as is a 5000-digit integer
        raise _Invalid("malformed", f"not JSON: {e}") from None
    if type(obj) is not dict:
        raise _Invalid("malformed", f"a JSON {type(obj).__name__}, not an object")

    version = obj.get("v")
    if type(version) is not int or version != VERSION:
        raise _Invalid("bad_version", f"version {version!r}, this side speaks {VERSION}")
    _exact_keys(obj, ENVELOPE, "bad_field", "message")

    name = obj["type"]
    if type(name) is not str:
        raise _Invalid("bad_field", "type: expected a string")
    if name not in MessageType.__members__:
        raise _Invalid("unknown_type", f"no message type {name[:64]!r}")
    mtype = MessageType[name]
    priority = obj["priority"]
    if type(priority) is not str or priority not in Priority.__members__:
        raise _Invalid("bad_field", f"priority: expected one of {', '.join(Priority.__members__)}")
    for key in ("id", "sender"):
        if not _is_count(obj[key]):
            raise _Invalid("bad_field", f"{key}: expected a non-negative integer")
    receiver = obj["receiver"]
    if not (_is_count(receiver) or (type(receiver) is int and receiver == BROADCAST)):
        raise _Invalid("bad_field", f"receiver: expected a sphere id or {BROADCAST} (broadcast)")
    ts = _finite_float(obj["ts"])
    if ts is None:
        raise _Invalid("bad_field", "ts: expected a finite number")

    payload = _record(mtype.payload, obj["payload"], "payload", 0)
    return Message(mtype, Priority[priority], obj["id"], obj["sender"], receiver, ts, payload)


def _record(cls: type, value, path: str, depth: int):
    """An instance of the payload dataclass ``cls`` built from a JSON object, every field checked."""
    if depth > MAX_DEPTH:
        raise _Invalid("bad_payload", f"{path}: nested deeper than {MAX_DEPTH}")
    if type(value) is not dict:
        raise _Invalid("bad_payload", f"{path}: expected an object")
    fields = SCHEMAS[cls]
    _exact_keys(value, fields, "bad_payload", path)
    return cls(**{name: _field(hint, value[name], f"{path}.{name}", depth) for name, hint in fields.items()})


def _field(hint, value, path: str, depth: int):
    if hint is int and _is_count(value):
        return value
    if hint is float and (number := _finite_float(value)) is not None:
        return number
    if hint is str and type(value) is str:
        return value
    if hint is bool and type(value) is bool:
        return value
    if get_origin(hint) is Literal and type(value) is str and value in get_args(hint):
        return value
    if get_origin(hint) is list and type(value) is list:
        (item,) = get_args(hint)
        return [_field(item, v, f"{path}[{i}]", depth) for i, v in enumerate(value)]
    if hint in SCHEMAS:
        return _record(hint, value, path, depth + 1)
    raise _Invalid("bad_payload", f"{path}: expected {_describe(hint)}")


def _describe(hint) -> str:
    if hint is int:
        return "a non-negative integer"
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(get_args(hint))
    if get_origin(hint) is list:
        return "a list"
    return {float: "a finite number", str: "a string", bool: "true or false"}.get(hint, "an object")


def _exact_keys(obj: dict, expected, code: str, path: str) -> None:
    missing = [k for k in expected if k not in obj]
    unknown = [k for k in obj if k not in expected]
    if missing or unknown:
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unknown {', '.join(repr(k[:64]) for k in unknown[:8])}"] if unknown else []
        raise _Invalid(code, f"{path}: {'; '.join(parts)}")


def _is_count(value) -> bool:
    return type(value) is int and value >= 0  # bool is a subclass of int; ``type(...) is`` keeps it out


def _finite_float(value) -> float | None:
    if type(value) not in (int, float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return number if math.isfinite(number) else None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not strict JSON")


# field name -> type for every payload record, resolved once
SCHEMAS = {
    cls: {f.name: get_type_hints(cls)[f.name] for f in dataclasses.fields(cls)}
    for cls in vars(payloads).values()
    if isinstance(cls, type) and dataclasses.is_dataclass(cls)
}
