"""The 28 message types spheres and Node Zero exchange, their priorities, and ``Message``.

Default priorities, from the mailbox's point of view:

    CRITICAL  SHUTDOWN_REQUEST, SHUTDOWN_ACK, ERROR_REPORT: must get through a full mailbox
    HIGH      work distribution, hierarchy changes, ERROR_RECOVERY, STATS_REQUEST:
              small control messages that steer what the data messages do
    NORMAL    gradients, weights, batches and epochs: the training data path. Epoch
              marks share the batches' level so an EPOCH_COMPLETE cannot overtake
              the last BATCH_COMPLETE of its epoch (a mailbox is FIFO only within a level)
    LOW       boundary notifications and STATS_REPORT: observations; no step waits on them

The boundary types come from the original design, where they marked a lattice
boundary; here they mark boundaries of the token stream and of the schedule:

    BOUNDARY_CROSSING      a micro-batch's windows span a document or shard boundary,
                           or the training cursor wraps into a new epoch
    BOUNDARY_REGION_ENTER  the data cursor enters the last batch of an epoch, or
                           evaluation starts reading the validation split
    BOUNDARY_REGION_EXIT   the cursor leaves that region
    TWIN_PRIME_HIT         the step is a multiple of the eval or checkpoint interval

The daemon's control socket speaks the same messages: ``cllm ctl workers N`` is
CHILD_SPAWN or CHILD_TERMINATE with count N, ``cllm ctl stats`` is STATS_REQUEST
(answered by STATS_REPORT), ``cllm ctl stop`` is SHUTDOWN_REQUEST.

Sphere ids are non-negative; Node Zero is 0. ``BROADCAST`` as a receiver means
every child of the sender.
"""

import builtins
import itertools
import time
from dataclasses import dataclass
from enum import Enum, IntEnum

from . import payloads as p

NODE_ZERO = 0
BROADCAST = -1


class Priority(IntEnum):
    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3


class Category(Enum):
    WORK = "work distribution"
    GRADIENT = "gradient synchronisation"
    WEIGHTS = "weight broadcasting"
    BOUNDARY = "boundary notifications"
    COORDINATION = "coordination"
    HIERARCHY = "hierarchy management"
    ERROR = "errors"
    STATS = "statistics"
    SHUTDOWN = "shutdown"


C, P = Category, Priority


class MessageType(Enum):
    """A message type; each member carries its category, default priority, payload class and use."""

    def __new__(cls, category: Category, priority: Priority, payload: type, doc: str):
        member = object.__new__(cls)
        member._value_ = len(cls.__members__) + 1
        member.category, member.priority, member.payload, member.doc = category, priority, payload, doc
        return member

    WORK_REQUEST = C.WORK, P.HIGH, p.WorkRequest, "an idle worker asks its parent for micro-batches"
    WORK_OFFER = C.WORK, P.HIGH, p.WorkOffer, "Node Zero offers a worker forward-only rows (validation)"
    WORK_ACCEPT = C.WORK, P.HIGH, p.WorkReply, "the worker takes the offered rows"
    WORK_REJECT = C.WORK, P.HIGH, p.WorkReply, "the worker declines (not ready); Node Zero offers the rows to another"

    GRADIENT_READY = C.GRADIENT, P.NORMAL, p.GradientReady, (
        "a worker has written its micro-batch gradient into its grad_segment")
    GRADIENT_ACCUMULATE = C.GRADIENT, P.NORMAL, p.GradientAccumulate, (
        "a group parent has summed its children's segments into result")
    GRADIENT_COMPLETE = C.GRADIENT, P.NORMAL, p.GradientComplete, (
        "Node Zero holds the step's full gradient: mean loss and norm before clipping")

    WEIGHTS_UPDATED = C.WEIGHTS, P.NORMAL, p.WeightsUpdated, (
        "the optimizer step is applied to the shared weights")
    WEIGHTS_REQUEST = C.WEIGHTS, P.NORMAL, p.WeightsRequest, (
        "a sphere that joined or recovered asks for the weights of a step")
    WEIGHTS_BROADCAST = C.WEIGHTS, P.NORMAL, p.WeightsBroadcast, (
        "the weights a newly joined sphere must read from")

    BOUNDARY_CROSSING = C.BOUNDARY, P.LOW, p.BoundaryCrossing, (
        "a micro-batch spans a document or shard boundary, or the cursor wraps into a new epoch")
    TWIN_PRIME_HIT = C.BOUNDARY, P.LOW, p.IntervalHit, "the step is an eval or checkpoint step"
    BOUNDARY_REGION_ENTER = C.BOUNDARY, P.LOW, p.Region, (
        "the cursor enters the last batch of an epoch, or evaluation enters the validation split")
    BOUNDARY_REGION_EXIT = C.BOUNDARY, P.LOW, p.Region, (
        "the cursor leaves the epoch's last batch or the validation split")

    EPOCH_START = C.COORDINATION, P.NORMAL, p.EpochMark, "the first step of an epoch begins"
    EPOCH_COMPLETE = C.COORDINATION, P.NORMAL, p.EpochMark, "the last step of an epoch is applied"
    BATCH_START = C.COORDINATION, P.NORMAL, p.BatchStart, (
        "a worker is to run forward and backward on rows of the step")
    BATCH_COMPLETE = C.COORDINATION, P.NORMAL, p.BatchComplete, "a worker has finished offered rows: their summed loss"

    CHILD_SPAWN = C.HIERARCHY, P.HIGH, p.ChildCount, (
        "grow the tree to count workers (`cllm ctl workers N` with N above the current count)")
    CHILD_TERMINATE = C.HIERARCHY, P.HIGH, p.ChildCount, (
        "shrink the tree to count workers; the spheres that go answer SHUTDOWN_ACK")
    PARENT_SYNC = C.HIERARCHY, P.HIGH, p.ParentSync, (
        "a new or re-parented sphere learns its parent and the current step")
    SIBLING_DISCOVER = C.HIERARCHY, P.HIGH, p.SiblingDiscover, (
        "a parent tells its children their symmetry group and siblings")

    ERROR_REPORT = C.ERROR, P.CRITICAL, p.ErrorReport, (
        "a sphere's micro-batch raised; the step cannot complete as is")
    ERROR_RECOVERY = C.ERROR, P.HIGH, p.ErrorRecovery, "Node Zero decides: retry the step or fail the run"

    STATS_REQUEST = C.STATS, P.HIGH, p.StatsRequest, "ask a subtree for its counters (also `cllm ctl stats`)"
    STATS_REPORT = C.STATS, P.LOW, p.StatsReport, "a sphere's counters with its children's reports nested"

    SHUTDOWN_REQUEST = C.SHUTDOWN, P.CRITICAL, p.ShutdownRequest, (
        "stop the run, now or after the step (`cllm ctl stop`)")
    SHUTDOWN_ACK = C.SHUTDOWN, P.CRITICAL, p.ShutdownAck, "a sphere has stopped and released its buffers"


del C, P


@dataclass(frozen=True, slots=True)
class Message:
    type: MessageType
    priority: Priority
    id: int  # increasing within the sending process
    sender: int
    receiver: int  # a sphere id or BROADCAST
    timestamp: float  # seconds since the epoch, time.time()
    payload: object  # an instance of type.payload


def make(type: MessageType, sender: int, receiver: int, payload, priority: Priority | None = None) -> Message:
    """A message stamped now, at the type's default priority unless one is given."""
    if builtins.type(payload) is not type.payload:  # ``type`` is the message type here
        raise TypeError(f"{type.name} carries {type.payload.__name__}, not {builtins.type(payload).__name__}")
    return Message(type, type.priority if priority is None else Priority(priority), next(_ids), sender, receiver,
                   time.time(), payload)


# The one piece of module state: ids increase across the whole process (so also per
# sender) and name one message in a log. next() on a count is atomic under the GIL.
_ids = itertools.count(1)
