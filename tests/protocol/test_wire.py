"""Encoding round-trips every type; decoding names what is wrong with a bad line and never raises."""

import json

import pytest

from cllm.protocol import payloads as p
from cllm.protocol.messages import BROADCAST, MessageType, make
from cllm.protocol.wire import MAX_DEPTH, MAX_LINE_BYTES, WireError, decode, encode

from .examples import PAYLOADS, message_of_every_type


def valid_object() -> dict:
    line = encode(make(MessageType.WORK_OFFER, 0, 3, PAYLOADS[p.WorkOffer]))
    return json.loads(line)


def line_of(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def error_code(line: bytes) -> str:
    result = decode(line)
    assert isinstance(result, WireError), result
    assert result.detail
    return result.code


def test_every_type_round_trips():
    for message in message_of_every_type():
        assert decode(encode(message)) == message


def test_a_message_is_one_versioned_line():
    message = make(MessageType.SIBLING_DISCOVER, 0, BROADCAST, PAYLOADS[p.SiblingDiscover])
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    obj = json.loads(line)
    assert list(obj) == ["v", "type", "priority", "id", "sender", "receiver", "ts", "payload"]
    assert obj["v"] == 1 and obj["type"] == "SIBLING_DISCOVER" and obj["priority"] == "HIGH"
    assert obj["receiver"] == BROADCAST and obj["payload"] == {"group": 1, "siblings": [2, 3, 4]}
    assert decode(line.rstrip(b"\n")) == message


def test_nested_records_come_back_as_records():
    report = decode(encode(make(MessageType.STATS_REPORT, 0, 0, PAYLOADS[p.StatsReport]))).payload
    assert isinstance(report.children[1], p.StatsReport) and report.children[1].waiting_s == 0.625
    batch = decode(line_of(valid_object())).payload
    assert isinstance(batch.grad_segment, p.BufferRef) and batch.grad_segment.dtype == "float32"


def test_an_integer_is_accepted_where_a_float_is_expected():
    obj = valid_object()
    obj["ts"] = 1_718_000_000
    message = decode(line_of(obj))
    assert message.timestamp == 1_718_000_000.0 and type(message.timestamp) is float


def mutated(path, value=None, delete=False) -> bytes:
    obj = valid_object()
    *parents, last = path
    target = obj
    for key in parents:
        target = target[key]
    if delete:
        del target[last]
    else:
        target[last] = value
    return line_of(obj)


@pytest.mark.parametrize("line, code", [
    (b"hello\n", "malformed"),
    (b'{"v": 1, "type": \n', "malformed"),
    (b"[1, 2, 3]\n", "malformed"),
    (b'"a string"\n', "malformed"),
    (b"\n", "malformed"),
    (b'{"v": 1, "type": "BATCH_START"}\xff\xfe\n', "malformed"),
    (b"\xc3\x28\n", "malformed"),
    (b'{"v": 2, "type": "A_FUTURE_TYPE", "body": {}}\n', "bad_version"),
    (b'{"type": "BATCH_START"}\n', "bad_version"),
    (b'{"v": true}\n', "bad_version"),
    (b'{"v": 1.0}\n', "bad_version"),
    (b"x" * MAX_LINE_BYTES + b"\n", "oversized"),
    (b"[" * 100_000, "oversized"),
    (b"[" * 50_000, "malformed"),  # nesting beyond the JSON parser's recursion limit
    (b'{"v": 1, "ts": NaN}\n', "malformed"),
])
def test_lines_that_are_not_messages(line, code):
    assert error_code(line) == code


@pytest.mark.parametrize("path, value, code", [
    (("type",), "GRADIENT_SCATTER", "unknown_type"),
    (("type",), 7, "bad_field"),
    (("priority",), "URGENT", "bad_field"),
    (("id",), True, "bad_field"),  # bool where an int is expected
    (("id",), -1, "bad_field"),
    (("sender",), 1.5, "bad_field"),
    (("receiver",), -2, "bad_field"),
    (("receiver",), "all", "bad_field"),
    (("ts",), "yesterday", "bad_field"),
    (("ts",), 10**400, "bad_field"),  # an integer no float can hold
    (("extra",), 1, "bad_field"),
    (("payload",), [], "bad_payload"),
    (("payload", "round"), "12", "bad_payload"),  # wrong type
    (("payload", "round"), True, "bad_payload"),  # bool where an int is expected
    (("payload", "round"), 12.0, "bad_payload"),
    (("payload", "micro_batch"), -4, "bad_payload"),
    (("payload", "micro_batch"), None, "bad_payload"),
    (("payload", "learning_rate"), 0.1, "bad_payload"),  # unknown payload field
    (("payload", "grad_segment"), "grads", "bad_payload"),
    (("payload", "grad_segment", "length"), False, "bad_payload"),
    (("payload", "grad_segment", "dtype"), "bfloat16", "bad_payload"),
    (("payload", "grad_segment", "stride"), 1, "bad_payload"),
])
def test_bad_fields_are_named(path, value, code):
    assert error_code(mutated(path, value)) == code


@pytest.mark.parametrize("path, code", [
    (("sender",), "bad_field"),
    (("payload",), "bad_field"),
    (("payload", "dloss"), "bad_payload"),
    (("payload", "grad_segment", "dtype"), "bad_payload"),  # every field is required on the wire
])
def test_missing_fields_are_named(path, code):
    assert error_code(mutated(path, delete=True)) == code


def test_lists_literals_floats_and_bools_in_payloads_are_checked():
    def with_payload(mtype, **fields):
        obj = valid_object()
        obj["type"], obj["payload"] = mtype.name, fields
        return line_of(obj)

    assert error_code(with_payload(MessageType.SIBLING_DISCOVER, group=1, siblings=[2, True])) == "bad_payload"
    assert error_code(with_payload(MessageType.SIBLING_DISCOVER, group=1, siblings=2)) == "bad_payload"
    assert error_code(with_payload(MessageType.TWIN_PRIME_HIT, step=1, kind="prime")) == "bad_payload"
    assert error_code(with_payload(MessageType.BATCH_COMPLETE, step=1, micro_batch=0, busy_s=True)) == "bad_payload"
    assert error_code(with_payload(MessageType.SHUTDOWN_REQUEST, reason="x", after_step=1)) == "bad_payload"
    assert isinstance(decode(with_payload(MessageType.STATS_REQUEST)).payload, p.StatsRequest)


def test_stats_reports_nested_too_deep_are_refused():
    def nested(depth):
        report = {"sphere": 0, "group": 0, "batches": 0, "tokens": 0, "busy_s": 0.0, "waiting_s": 0.0, "children": []}
        for _ in range(depth):
            report = dict(report, children=[report])
        obj = valid_object()
        obj["type"], obj["payload"] = "STATS_REPORT", report
        return line_of(obj)

    assert not isinstance(decode(nested(MAX_DEPTH)), WireError)
    assert error_code(nested(MAX_DEPTH + 1)) == "bad_payload"
    # deeper than json itself can nest: built as text
    head = line_of(valid_object()).split(b'"payload"')[0].replace(b"WORK_OFFER", b"STATS_REPORT")
    report = b'{"sphere":0,"batches":0,"tokens":0,"busy_s":0.0,"waiting_s":0.0,"children":['
    line = head + b'"payload":' + report * 700 + b"]}" * 700 + b"}\n"
    assert len(line) < MAX_LINE_BYTES and error_code(line) in {"malformed", "bad_payload"}  # by recursion limit


def test_encode_refuses_what_decode_would_refuse():
    with pytest.raises(ValueError):
        encode(make(MessageType.GRADIENT_COMPLETE, 0, 0, p.GradientComplete(1, 10, float("nan"), 1.0)))
    with pytest.raises(ValueError, match="MAX_LINE_BYTES"):
        encode(make(MessageType.ERROR_REPORT, 2, 0, p.ErrorReport(1, 1, 2, "E", "x" * MAX_LINE_BYTES)))
