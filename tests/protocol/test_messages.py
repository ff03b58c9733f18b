"""The fixed set of 28 message types, their categories and defaults, and how messages are made."""

import dataclasses

import pytest

from cllm.protocol import payloads as p
from cllm.protocol.messages import BROADCAST, Category, Message, MessageType, Priority, make

from .examples import PAYLOADS

CATEGORIES = {
    Category.WORK: {"WORK_REQUEST", "WORK_OFFER", "WORK_ACCEPT", "WORK_REJECT"},
    Category.GRADIENT: {"GRADIENT_READY", "GRADIENT_ACCUMULATE", "GRADIENT_COMPLETE"},
    Category.WEIGHTS: {"WEIGHTS_UPDATED", "WEIGHTS_REQUEST", "WEIGHTS_BROADCAST"},
    Category.BOUNDARY: {"BOUNDARY_CROSSING", "TWIN_PRIME_HIT", "BOUNDARY_REGION_ENTER", "BOUNDARY_REGION_EXIT"},
    Category.COORDINATION: {"EPOCH_START", "EPOCH_COMPLETE", "BATCH_START", "BATCH_COMPLETE"},
    Category.HIERARCHY: {"CHILD_SPAWN", "CHILD_TERMINATE", "PARENT_SYNC", "SIBLING_DISCOVER"},
    Category.ERROR: {"ERROR_REPORT", "ERROR_RECOVERY"},
    Category.STATS: {"STATS_REQUEST", "STATS_REPORT"},
    Category.SHUTDOWN: {"SHUTDOWN_REQUEST", "SHUTDOWN_ACK"},
}


def test_there_are_exactly_28_types_in_9_categories_with_the_original_membership():
    assert len(MessageType) == 28 and len(Category) == 9
    for category, names in CATEGORIES.items():
        assert {t.name for t in MessageType if t.category is category} == names


def test_every_type_has_a_payload_class_a_default_priority_and_a_use():
    for mtype in MessageType:
        assert dataclasses.is_dataclass(mtype.payload) and mtype.payload in PAYLOADS
        assert isinstance(mtype.priority, Priority)
        assert mtype.doc.strip()


def test_default_priorities_follow_the_documented_policy():
    by_priority = {level: {t.name for t in MessageType if t.priority is level} for level in Priority}
    assert by_priority[Priority.CRITICAL] == {"SHUTDOWN_REQUEST", "SHUTDOWN_ACK", "ERROR_REPORT"}
    assert by_priority[Priority.LOW] == CATEGORIES[Category.BOUNDARY] | {"STATS_REPORT"}
    assert {"STATS_REQUEST", "CHILD_SPAWN", "WORK_REQUEST", "ERROR_RECOVERY"} <= by_priority[Priority.HIGH]
    # epochs share the batches' level so an epoch mark cannot overtake a batch in a mailbox
    assert MessageType.EPOCH_COMPLETE.priority == MessageType.BATCH_COMPLETE.priority == Priority.NORMAL


def test_payloads_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PAYLOADS[p.WeightsRequest].step = 13


def test_make_defaults_the_priority_from_the_type_and_keeps_an_explicit_one():
    payload = p.ShutdownRequest(reason="test", after_step=False)
    assert make(MessageType.SHUTDOWN_REQUEST, 0, BROADCAST, payload).priority == Priority.CRITICAL
    assert make(MessageType.STATS_REPORT, 2, 0, PAYLOADS[p.StatsReport], Priority.HIGH).priority \
        == Priority.HIGH


def test_make_rejects_a_payload_of_another_type():
    with pytest.raises(TypeError, match="BATCH_START carries BatchStart"):
        make(MessageType.BATCH_START, 0, 3, PAYLOADS[p.BatchComplete])


def test_message_ids_increase_across_senders():
    ids = [make(MessageType.WEIGHTS_REQUEST, sender, 0, PAYLOADS[p.WeightsRequest]).id for sender in (1, 5, 1, 0)]
    assert ids == sorted(set(ids))


def test_messages_are_frozen():
    message = make(MessageType.STATS_REQUEST, 0, BROADCAST, p.StatsRequest())
    assert isinstance(message, Message)
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.receiver = 4
