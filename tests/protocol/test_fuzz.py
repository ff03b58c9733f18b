"""Property-based fuzzing of what crosses a process boundary: the wire decoder and the control channel.

Whatever arrives, decoding returns a value or an error value: never an exception, never a hang.
"""

import json
import math

from hypothesis import given, settings, strategies as st

from cllm.protocol.control import COMMANDS, ControlRequest, decode_reply, decode_request, encode_reply, encode_request
from cllm.protocol.wire import WireError, decode, encode

from ..fuzzing import FUZZ, damaged, deep_text, dumps, edits, replaced, values
from .examples import message_of_every_type

LINES = [encode(m) for m in message_of_every_type()]
paths = st.lists(st.integers(0, 50), min_size=1, max_size=5)

wire_lines = st.one_of(
    st.binary(max_size=400),
    st.builds(damaged, st.sampled_from(LINES), edits),
    st.builds(lambda line, path, value: dumps(replaced(json.loads(line), path, value)), st.sampled_from(LINES), paths,
              values),
    values.map(dumps),
    deep_text.map(str.encode))


@FUZZ
@given(wire_lines)
def test_the_wire_decoder_returns_a_message_or_an_error_for_any_line(line):
    result = decode(line)
    assert isinstance(result, WireError) and result.code and result.detail or decode(encode(result)) == result


def encoded(command: str, count: int) -> bytes:
    args = {"workers": {"count": count}, "submit": {"job": {"training": {"steps": count}}},
            "cancel": {"id": f"job-{count}"}}.get(command, {})
    return encode_request(ControlRequest(count, command, args))


REQUESTS = [encoded(command, 3) for command in COMMANDS]
request_lines = st.one_of(
    st.binary(max_size=300),
    st.builds(damaged, st.builds(encoded, st.sampled_from(sorted(COMMANDS)), st.integers(1, 5000)), edits),
    st.builds(lambda line, path, value: dumps(replaced(json.loads(line), path, value)), st.sampled_from(REQUESTS),
              paths, values),
    values.map(dumps),
    deep_text.map(str.encode))


@FUZZ
@given(request_lines)
def test_the_control_validator_returns_a_request_or_an_error_for_any_line(line):
    result = decode_request(line)
    if isinstance(result, WireError):
        assert result.code and result.detail
        return
    assert result.command in COMMANDS and type(result.id) is int and result.id >= 0
    assert decode_request(encode_request(result).strip()) == result


def leaves(value):
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            yield from leaves(item)
    else:
        yield value


@settings(FUZZ, max_examples=1000)
@given(values, st.binary(max_size=300) | values.map(dumps) | deep_text.map(str.encode))
def test_replies_carry_any_result_and_the_reply_decoder_takes_anything(result, line):
    body = decode_reply(encode_reply(5, result))
    assert not isinstance(body, WireError) and body["ok"] is True
    if all(not isinstance(leaf, float) or math.isfinite(leaf) for leaf in leaves(result)):
        assert body["result"] == json.loads(json.dumps(result))
    body = decode_reply(line)
    if not isinstance(body, WireError):
        assert type(body["ok"]) is bool
        assert body["ok"] or (type(body["error"]["code"]) is str and type(body["error"]["detail"]) is str)
