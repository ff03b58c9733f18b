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
    dtype: Literal["float32", "float64"] = "float32"


# work distribution


@dataclass(frozen=True, slots=True)
class WorkRequest:
    worker: int
    capacity: int  # micro-batches the worker can take this step


@dataclass(frozen=True, slots=True)
class WorkOffer:
    """Forward-only work (a validation pass): rows [row_start, row_stop) of batch ``micro_batch``."""

    step: int
    micro_batch: int
    row_start: int
    row_stop: int


@dataclass(frozen=True, slots=True)
class WorkReply:
    """WORK_ACCEPT or WORK_REJECT; ``reason`` is empty on accept."""

    step: int
    micro_batch: int
    reason: str


# gradient synchronisation


@dataclass(frozen=True, slots=True)
class GradientReady:
    step: int
    micro_batch: int
    tokens: int  # target tokens the loss was summed over
    loss_sum: float  # summed, not averaged, so parents can add them
    busy_s: float  # forward and backward time
    grad_segment: BufferRef


@dataclass(frozen=True, slots=True)
class GradientAccumulate:
    step: int
    group: int
    sources: list[int]  # the spheres whose segments were summed into result
    tokens: int  # sums over the sources
    loss_sum: float
    busy_s: float  # the slowest source plus the time to sum: this subtree's critical path
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
    step: int
    position: int  # token offset of the crossing in the training stream
    kind: Literal["document", "shard", "epoch"]


@dataclass(frozen=True, slots=True)
class IntervalHit:
    step: int
    kind: Literal["eval", "checkpoint"]


@dataclass(frozen=True, slots=True)
class Region:
    step: int
    position: int  # token offset where the cursor entered or left the region
    kind: Literal["epoch_end", "validation"]


# coordination


@dataclass(frozen=True, slots=True)
class EpochMark:
    epoch: int
    step: int


@dataclass(frozen=True, slots=True)
class BatchStart:
    step: int
    micro_batch: int
    row_start: int  # rows [row_start, row_stop) of the step's batch
    row_stop: int
    grad_segment: BufferRef  # where the worker writes its gradient


@dataclass(frozen=True, slots=True)
class BatchComplete:
    """Forward-only work done: the summed loss over ``tokens`` target tokens."""

    step: int
    micro_batch: int
    tokens: int
    loss_sum: float
    busy_s: float


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
    group: int
    siblings: list[int]


# errors


@dataclass(frozen=True, slots=True)
class ErrorReport:
    step: int
    sphere: int
    error_type: str  # the exception class name
    message: str


@dataclass(frozen=True, slots=True)
class ErrorRecovery:
    step: int
    action: Literal["retry", "fail"]


# statistics


@dataclass(frozen=True, slots=True)
class StatsRequest:
    pass


@dataclass(frozen=True, slots=True)
class StatsReport:
    """One sphere's counters since start, with its children's reports nested."""

    sphere: int
    batches: int
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
