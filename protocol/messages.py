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
boundary; here they mark boundaries of the token stream and of the schedule, and
the training loop acts on each (coord/training/trainer.py ``handle``):

    BOUNDARY_CROSSING      the step's rows cross document or source-file boundaries (the positions)
    BOUNDARY_REGION_ENTER  the data cursor enters the last batch of an epoch
    BOUNDARY_REGION_EXIT   the cursor leaves it
    TWIN_PRIME_HIT         evaluate or checkpoint at this step's boundary (an interval
                           step, or `cllm ctl checkpoint`)

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

    WORK_REQUEST = C.WORK, P.HIGH, p.WorkRequest, "an idle worker asks for a micro-batch of the round"
    WORK_OFFER = C.WORK, P.HIGH, p.WorkOffer, (
        "Node Zero offers a worker one micro-batch: its rows, targets and the segment for its gradient")
    WORK_ACCEPT = C.WORK, P.HIGH, p.WorkReply, "the worker takes the offered micro-batch"
    WORK_REJECT = C.WORK, P.HIGH, p.WorkReply, (
        "the worker declines an offer of a round it is no longer in; Node Zero offers it again")

    GRADIENT_READY = C.GRADIENT, P.NORMAL, p.GradientSum, (
        "a worker has written one micro-batch's gradient into the offered segment")
    GRADIENT_ACCUMULATE = C.GRADIENT, P.NORMAL, p.GradientSum, (
        "a group has summed adjacent micro-batch ranges of its workers, in the fixed pairwise order")
    GRADIENT_COMPLETE = C.GRADIENT, P.NORMAL, p.GradientComplete, (
        "Node Zero holds the step's full gradient: mean loss and norm before clipping")

    WEIGHTS_UPDATED = C.WEIGHTS, P.NORMAL, p.WeightsUpdated, (
        "the optimizer step is applied to the shared weights")
    WEIGHTS_REQUEST = C.WEIGHTS, P.NORMAL, p.WeightsRequest, (
        "a sphere that joined or recovered asks for the weights of a step")
    WEIGHTS_BROADCAST = C.WEIGHTS, P.NORMAL, p.WeightsBroadcast, (
        "the weights a newly joined sphere must read from")

    BOUNDARY_CROSSING = C.BOUNDARY, P.LOW, p.BoundaryCrossing, (
        "the step's rows cross document boundaries, or source-file (shard) boundaries, at the given positions")
    TWIN_PRIME_HIT = C.BOUNDARY, P.LOW, p.IntervalHit, "evaluate or checkpoint at this step's boundary"
    BOUNDARY_REGION_ENTER = C.BOUNDARY, P.LOW, p.Region, (
        "the cursor enters the last batch of an epoch: the next epoch's window order is drawn")
    BOUNDARY_REGION_EXIT = C.BOUNDARY, P.LOW, p.Region, "the cursor leaves the last batch of an epoch"

    EPOCH_START = C.COORDINATION, P.NORMAL, p.EpochMark, "the first step of an epoch begins"
    EPOCH_COMPLETE = C.COORDINATION, P.NORMAL, p.EpochMark, "the last step of an epoch is applied"
    BATCH_START = C.COORDINATION, P.NORMAL, p.BatchStart, (
        "a round of micro-batches begins (a step's, or an evaluation's): workers ask for work")
    BATCH_COMPLETE = C.COORDINATION, P.NORMAL, p.BatchComplete, (
        "a worker has evaluated an offered micro-batch: its summed loss")

    CHILD_SPAWN = C.HIERARCHY, P.HIGH, p.ChildCount, (
        "grow the tree to count workers (`cllm ctl workers N` with N above the current count)")
    CHILD_TERMINATE = C.HIERARCHY, P.HIGH, p.ChildCount, (
        "shrink the tree to count workers; the spheres that go answer SHUTDOWN_ACK")
    PARENT_SYNC = C.HIERARCHY, P.HIGH, p.ParentSync, (
        "a new or re-parented sphere learns its parent and the current step")
    SIBLING_DISCOVER = C.HIERARCHY, P.HIGH, p.SiblingDiscover, (
        "a parent tells each child its symmetry group number (0-11) and its siblings")

    ERROR_REPORT = C.ERROR, P.CRITICAL, p.ErrorReport, (
        "a sphere's micro-batch raised; the round cannot complete as is")
    ERROR_RECOVERY = C.ERROR, P.HIGH, p.ErrorRecovery, (
        "every sphere forgets the failed round; Node Zero retries the step or fails it")

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
