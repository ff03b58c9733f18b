"""Control requests: every command round-trips; anything else is an error value, never an exception."""

import json

import pytest

from cllm.protocol.control import COMMANDS, ControlRequest, decode_reply, decode_request, encode_reply, encode_request
from cllm.protocol.wire import MAX_LINE_BYTES, WireError

EXAMPLES = {"status": {}, "pause": {}, "resume": {}, "checkpoint": {}, "stop": {}, "reload": {}, "workers": {"count": 4},
            "stats": {}, "jobs": {}, "submit": {"job": {"training": {"steps": 10}}}, "cancel": {"id": "job-1"}}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_round_trips(command):
    request = ControlRequest(7, command, EXAMPLES[command])
    assert decode_request(encode_request(request).strip()) == request


@pytest.mark.parametrize("line, code", [
    (b"\xff\xfe", "malformed"),
    (b"[1, 2]", "malformed"),
    (b'{"v": 2, "id": 1, "command": "status", "args": {}}', "bad_version"),
    (b'{"v": true, "id": 1, "command": "status", "args": {}}', "bad_version"),
    (b'{"v": 1, "id": -1, "command": "status", "args": {}}', "bad_field"),
    (b'{"v": 1, "id": 1, "command": "status", "args": {}, "x": 1}', "bad_field"),
    (b'{"v": 1, "id": 1, "command": "reboot", "args": {}}', "unknown_command"),
    (b'{"v": 1, "id": 1, "command": ["status"], "args": {}}', "unknown_command"),  # not a string, not hashable
    (b'{"v": 1, "id": 1, "command": "workers", "args": {"count": 0}}', "bad_args"),
    (b'{"v": 1, "id": 1, "command": "workers", "args": {"count": true}}', "bad_args"),
    (b'{"v": 1, "id": 1, "command": "workers", "args": {}}', "bad_args"),
    (b'{"v": 1, "id": 1, "command": "status", "args": {"now": 1}}', "bad_args"),
    (b'{"v": 1, "id": 1, "command": "cancel", "args": {"id": ""}}', "bad_args"),
    (b'{"v": 1, "id": 1, "command": "submit", "args": {"job": []}}', "bad_args"),
    (b"{" + b" " * MAX_LINE_BYTES + b"}", "oversized"),
])
def test_bad_requests_are_error_values(line, code):
    result = decode_request(line)
    assert isinstance(result, WireError) and result.code == code


def test_replies_carry_a_result_or_an_error():
    ok = decode_reply(encode_reply(3, {"step": 5}))
    assert ok == {"v": 1, "id": 3, "ok": True, "result": {"step": 5}}
    bad = json.loads(encode_reply(3, error=WireError("refused", "no run")))
    assert bad["ok"] is False and bad["error"] == {"code": "refused", "detail": "no run"}


def test_a_result_that_is_not_finite_travels_as_null():
    assert decode_reply(encode_reply(3, {"loss": float("nan"), "losses": [1.5, float("inf")]}))["result"] == {
        "loss": None, "losses": [1.5, None]}


@pytest.mark.parametrize("line", [b"[" * 50_000, b'{"ok": 1}', b'{"ok": true}', b'{"ok": false, "error": "x"}',
                                  b'{"ok": false, "error": {"code": 1, "detail": "x"}}', b"\xff"])
def test_replies_that_are_not_replies_are_error_values(line):
    assert isinstance(decode_reply(line), WireError)
