"""The payload of each message type: small frozen records of JSON-able fields.

Gradients and weights never travel inside a message. They live in flat buffers
shared by every sphere of the process, and a message carries a ``BufferRef`` to
the region it means. Every integer in a payload is a step, an index, a count or
a sphere id, so the wire decoder rejects negative integers; ``Literal`` fields
take only the listed strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class BufferRef:
    """Elements ``[offset, offset + length)`` of the shared buffer ``name``; units are elements of ``dtype``."""

    name: str
    offset: int
    length: int
    dtype: Literal["float32", "float64", "int32"] = "float32"


# work distribution
#
# A round is one posting of work: a training step's micro-batches, or an evaluation's. Round
# numbers increase through the run (a retried step is a new round), so an answer that arrives
# after its round ended is recognised and set aside.


@dataclass(frozen=True, slots=True)
class WorkRequest:
    round: int
    capacity: int  # micro-batches the worker can take now


@dataclass(frozen=True, slots=True)
class WorkOffer:
    """One micro-batch: its token rows and targets (B*T elements each, B rows of BatchStart.seq_len), where the
    worker writes its gradient, and the loss scale. An evaluation's offers carry an empty ``grad_segment``."""

    round: int
    micro_batch: int
    tokens: BufferRef
    targets: BufferRef
    grad_segment: BufferRef
    dloss: float  # 1 / tokens of the whole step: the segments add up to the gradient of the mean loss


@dataclass(frozen=True, slots=True)
class WorkReply:
    """WORK_ACCEPT or WORK_REJECT; ``reason`` is empty on accept."""

    round: int
    micro_batch: int
    worker: int  # the worker's index among the leaves
    reason: str


# gradient synchronisation


@dataclass(frozen=True, slots=True)
class GradientSum:
    """The gradient of micro-batches ``first``..``last`` (inclusive) of a round, summed in the fixed
    pairwise order, in ``result``; GRADIENT_READY carries one micro-batch, GRADIENT_ACCUMULATE a range."""

    round: int
    first: int
    last: int
    tokens: int  # target tokens the loss was summed over
    loss_sum: float  # summed, not averaged, so parents can add them
    busy_s: float  # seconds of kernels (forward, backward and the sums) spent on the range
    result: BufferRef


@dataclass(frozen=True, slots=True)
class GradientComplete:
    step: int
    tokens: int
    loss: float  # mean over tokens
    grad_norm: float  # before clipping


# weight broadcasting


@dataclass(frozen=True, slots=True)
class WeightsUpdated:
    step: int
    lr: float
    weights: BufferRef


@dataclass(frozen=True, slots=True)
class WeightsRequest:
    step: int


@dataclass(frozen=True, slots=True)
class WeightsBroadcast:
    step: int
    weights: BufferRef


# boundary notifications


@dataclass(frozen=True, slots=True)
class BoundaryCrossing:
    """The step's rows cross boundaries of the token stream: between documents ("document": every
    end-of-text separator among the rows' tokens) or between source files ("shard": the separators
    that end a file, each with the index and name of the file it begins; empty lists for "document")."""

    step: int
    kind: Literal["document", "shard"]
    positions: list[int]  # flat offsets of the separators in the step's (rows, seq_len) tokens
    shards: list[int]  # for "shard": the index of the source file each separator begins, in corpus order
    names: list[str]  # and its name, relative to the corpus


@dataclass(frozen=True, slots=True)
class IntervalHit:
    step: int
    kind: Literal["eval", "checkpoint"]


@dataclass(frozen=True, slots=True)
class Region:
    step: int
    position: int  # token offset into the epoch where the cursor entered or left the region
    kind: Literal["epoch_end"]


# coordination


@dataclass(frozen=True, slots=True)
class EpochMark:
    epoch: int
    step: int


@dataclass(frozen=True, slots=True)
class BatchStart:
    """A round begins: its micro-batches are waiting to be offered to workers that ask."""

    step: int
    round: int
    kind: Literal["train", "eval"]
    micro_batches: int
    seq_len: int  # tokens per row of every offer in the round


@dataclass(frozen=True, slots=True)
class BatchComplete:
    """Forward-only work done: the summed loss of one micro-batch over ``tokens`` target tokens, and
    ``hits``, the tokens whose target was the likeliest."""

    round: int
    micro_batch: int
    tokens: int
    loss_sum: float
    busy_s: float
    hits: int


# hierarchy management


@dataclass(frozen=True, slots=True)
class ChildCount:
    count: int  # the number of workers wanted once the tree is resized


@dataclass(frozen=True, slots=True)
class ParentSync:
    step: int
    parent: int


@dataclass(frozen=True, slots=True)
class SiblingDiscover:
    group: int  # the sphere's symmetry group: its position among its parent's children, 0-11
    siblings: list[int]  # the ids of all the parent's children, in group order


# errors


@dataclass(frozen=True, slots=True)
class ErrorReport:
    step: int
    round: int
    sphere: int
    error_type: str  # the exception class name
    message: str


@dataclass(frozen=True, slots=True)
class ErrorRecovery:
    step: int
    round: int  # the failed round, whose work every sphere forgets
    action: Literal["retry", "fail"]


# statistics


@dataclass(frozen=True, slots=True)
class StatsRequest:
    pass


@dataclass(frozen=True, slots=True)
class StatsReport:
    """One sphere's counters since start, with its children's reports nested."""

    sphere: int
    group: int  # its symmetry group within its parent (0-11)
    batches: int  # micro-batches computed
    tokens: int
    busy_s: float
    waiting_s: float
    children: list[StatsReport]


# shutdown


@dataclass(frozen=True, slots=True)
class ShutdownRequest:
    reason: str
    after_step: bool  # finish the current step (and its checkpoint) first


@dataclass(frozen=True, slots=True)
class ShutdownAck:
    sphere: int
