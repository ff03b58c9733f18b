"""Highest priority first, FIFO within a level, and room kept for CRITICAL messages."""

import pytest

from cllm.protocol import payloads as p
from cllm.protocol.mailbox import Mailbox
from cllm.protocol.messages import MessageType, Priority, make


def message(priority: Priority, label: int):
    """A message told apart by its payload's step."""
    return make(MessageType.WEIGHTS_REQUEST, 1, 0, p.WeightsRequest(step=label), priority)


def labels(messages) -> list:
    return [m.payload.step for m in messages]


def drain(box: Mailbox) -> list:
    out = []
    while (m := box.get()) is not None:
        out.append(m)
    return out


def test_a_critical_message_put_after_1000_low_ones_comes_out_first():
    box = Mailbox()
    for i in range(1000):
        assert box.put(message(Priority.LOW, i))
    assert box.put(message(Priority.CRITICAL, 1000))
    assert box.get().payload.step == 1000
    assert labels(drain(box)) == list(range(1000))


def test_levels_come_out_highest_first_and_each_level_in_arrival_order():
    box = Mailbox()
    order = [Priority.LOW, Priority.HIGH, Priority.NORMAL, Priority.CRITICAL, Priority.LOW, Priority.HIGH,
             Priority.CRITICAL, Priority.NORMAL, Priority.LOW]
    for i, level in enumerate(order):
        box.put(message(level, i))
    assert box.counts() == {Priority.LOW: 3, Priority.NORMAL: 2, Priority.HIGH: 2, Priority.CRITICAL: 2}
    assert labels(drain(box)) == [3, 6, 1, 5, 2, 7, 0, 4, 8]
    assert len(box) == 0 and box.get() is None


def test_a_full_box_refuses_lower_levels_but_keeps_room_for_critical_messages():
    box = Mailbox(capacity=10, critical_reserve=3)
    assert all(box.put(message(Priority.LOW, i)) for i in range(7))
    for level in (Priority.LOW, Priority.NORMAL, Priority.HIGH):
        assert not box.put(message(level, 99))
    assert all(box.put(message(Priority.CRITICAL, 100 + i)) for i in range(3))
    assert not box.put(message(Priority.CRITICAL, 103))
    assert len(box) == 10 and box.counts()[Priority.LOW] == 7

    # a refused put queued nothing; once messages leave, lower levels are accepted again
    assert labels(box.get() for _ in range(4)) == [100, 101, 102, 0]
    assert box.put(message(Priority.NORMAL, 7)) and not box.put(message(Priority.NORMAL, 8))


def test_the_reserve_must_leave_room_for_other_levels():
    with pytest.raises(ValueError):
        Mailbox(capacity=4, critical_reserve=4)


def test_a_shutdown_ack_at_its_default_priority_gets_through_a_default_box_flooded_with_stats_reports():
    box = Mailbox()
    report = p.StatsReport(sphere=7, group=0, batches=1, tokens=1, busy_s=0.0, waiting_s=0.0, children=[])
    while box.put(make(MessageType.STATS_REPORT, 7, 0, report)):
        pass
    assert box.put(make(MessageType.SHUTDOWN_ACK, 7, 0, p.ShutdownAck(sphere=7)))
    assert box.get().type is MessageType.SHUTDOWN_ACK


def test_discard_removes_only_the_unwanted_and_keeps_order_and_room():
    box = Mailbox(capacity=10, critical_reserve=3)
    for i in range(7):
        box.put(message(Priority.LOW, i))
    for i in range(3):
        box.put(message(Priority.CRITICAL, 100 + i))
    assert box.discard(lambda m: m.payload.step in (1, 101)) == 2
    assert len(box) == 8 and labels(drain(box)) == [100, 102, 0, 2, 3, 4, 5, 6]
