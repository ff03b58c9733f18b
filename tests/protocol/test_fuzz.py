"""Property-based fuzzing of what crosses a process boundary: the wire decoder and the control channel.

Whatever arrives, decoding returns a value or an error value: never an exception, never a hang.
"""

import json
import math

from hypothesis import HealthCheck, given, settings, strategies as st

from cllm.protocol.control import COMMANDS, ControlRequest, decode_reply, decode_request, encode_reply, encode_request
from cllm.protocol.wire import WireError, decode, encode

from .examples import message_of_every_type

FUZZ = settings(max_examples=3000, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

scalars = st.sampled_from([None, True, False, 0, 1, -1, 2**63, 10**400, 0.5, -0.0, 1e308, math.inf, math.nan, "",
                            "x", "NORMAL", "BATCH_START", "float32", "workers", "job-1", "\udcff"]) \
    | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
LINES = [encode(m) for m in message_of_every_type()]


def replaced(obj, path: list, value):
    """``obj`` with the item at ``path`` (indices chosen modulo each level's size) set to ``value``."""
    target = obj
    for choice in path:
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        if not keys:
            break
        key = keys[choice % len(keys)]
        if not isinstance(target[key], (dict, list)) or choice % 3 == 0:
            target[key] = value
            return obj
        target = target[key]
    if isinstance(target, dict):
        target[str(value)[:8]] = value
    return obj


def damaged(line: bytes, edits: list) -> bytes:
    data = bytearray(line)
    for at, piece in edits:
        at %= len(data) + 1
        data[at:at + len(piece)] = piece
    return bytes(data)


edits = st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=4)), min_size=1, max_size=4)
wire_lines = st.one_of(
    st.binary(max_size=400),
    st.builds(damaged, st.sampled_from(LINES), edits),
    st.builds(lambda line, path, value: json.dumps(replaced(json.loads(line), path, value)).encode(),
              st.sampled_from(LINES), st.lists(st.integers(0, 50), min_size=1, max_size=5), json_values),
    json_values.map(lambda value: json.dumps(value).encode()))


@FUZZ
@given(wire_lines)
def test_the_wire_decoder_returns_a_message_or_an_error_for_any_line(line):
    result = decode(line)
    assert isinstance(result, WireError) and result.code and result.detail or decode(encode(result)) == result


def encoded(command: str, count: int) -> bytes:
    args = {"workers": {"count": count}, "submit": {"job": {"training": {"steps": count}}},
            "cancel": {"id": f"job-{count}"}}.get(command, {})
    return encode_request(ControlRequest(count, command, args))


request_objects = st.fixed_dictionaries(
    {"v": st.just(1) | json_values, "id": st.integers(-3, 2**64) | json_values,
     "command": st.sampled_from(sorted(COMMANDS)) | json_values,
     "args": st.dictionaries(st.sampled_from(["count", "job", "id", "x"]), json_values, max_size=3) | json_values},
    optional={"extra": json_values})
request_lines = st.one_of(
    st.binary(max_size=300),
    request_objects.map(lambda body: json.dumps(body).encode()),
    st.builds(damaged, st.builds(encoded, st.sampled_from(sorted(COMMANDS)), st.integers(1, 5000)), edits))


@FUZZ
@given(request_lines)
def test_the_control_validator_returns_a_request_or_an_error_for_any_line(line):
    result = decode_request(line)
    if isinstance(result, WireError):
        assert result.code and result.detail
        return
    assert result.command in COMMANDS and type(result.id) is int and result.id >= 0
    assert decode_request(encode_request(result).strip()) == result


@settings(FUZZ, max_examples=1000)
@given(json_values, st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_replies_carry_any_result_and_the_reply_decoder_takes_anything(result, line):
    body = decode_reply(encode_reply(5, result))
    assert not isinstance(body, WireError) and body["ok"] is True
    if all(not isinstance(leaf, float) or math.isfinite(leaf) for leaf in leaves(result)):
        assert body["result"] == json.loads(json.dumps(result))
    body = decode_reply(line)
    if not isinstance(body, WireError):
        assert type(body["ok"]) is bool
        assert body["ok"] or (type(body["error"]["code"]) is str and type(body["error"]["detail"]) is str)


def leaves(value):
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            yield from leaves(item)
    else:
        yield value
