"""One round of work at Node Zero: the micro-batches waiting, the workers asking, the sums coming back.

A round's rows are cut into micro-batches; a worker that asks (WORK_REQUEST) is offered the
lowest waiting one (WORK_OFFER) with a free gradient segment, so a faster worker simply
asks, and takes, more often. A rejected micro-batch waits again.
"""

from collections import Counter, deque

from cllm.protocol import payloads as pl

from .context import SphereContext
from .reduction import Combiner, Part


def cut(rows: int, count: int, first: int = 0) -> list:
    """(first row, rows) of ``count`` micro-batches over ``rows`` rows from row ``first``, their sizes at most one
    apart, cut where the round's pairwise sum splits them (``reduction.PairwiseOrder``): the first ``count // 2``
    micro-batches take ``rows * (count // 2) // count`` rows, and each side is cut the same way. Two MPI ranks
    split a step's rows where this does (``coord/distributed/ranks.share``), so two ranks of W workers, each
    cutting its half, sum the same micro-batches in the same order as one process of 2W workers: bit for bit,
    with gradient accumulation too."""
    if count == 1:
        return [(first, rows)]
    half = count // 2
    left = rows * half // count
    return cut(left, half, first) + cut(rows - left, count - half, first + left)


def segments_needed(micro_batches: int, workers: int) -> int:
    """Segments a round holds at most without making a worker wait often: one per worker computing, plus the
    ranges waiting for a neighbour (a few per level of the pairwise tree)."""
    return min(micro_batches, workers + 2 * max(1, micro_batches - 1).bit_length() + 1)


class Round:
    def __init__(self, number: int, start: pl.BatchStart, cuts: list, dloss: float, ctx: SphereContext):
        self.number, self.start, self.cuts, self.dloss, self.ctx = number, start, cuts, dloss, ctx
        self.waiting = deque(range(len(cuts)))  # micro-batches not yet taken, lowest first
        self.asking = deque()  # worker sphere ids that asked for work
        self.offered = {}  # micro-batch -> its segment, while offered
        self.taken = Counter()  # worker index -> micro-batches it took
        self.combiner = Combiner(len(cuts), ctx.add)
        self.total = None  # the Part over every micro-batch, once it is here
        self.sum_s = 0.0  # seconds Node Zero spent summing ranges once every micro-batch was handed out

    @property
    def stalled(self) -> bool:
        """Work and a worker are waiting, but no segment is free yet."""
        return bool(self.asking and self.waiting and self.start.kind == "train" and not self.ctx.free)

    def offers(self) -> list:
        """(worker sphere id, WorkOffer) for as many askers as there is work and segments for."""
        made = []
        train = self.start.kind == "train"
        while self.asking and self.waiting and (self.ctx.free or not train):
            micro_batch = self.waiting.popleft()
            slot = self.ctx.take() if train else -1
            self.offered[micro_batch] = slot
            first, rows = self.cuts[micro_batch]
            T = self.start.seq_len
            made.append((self.asking.popleft(), pl.WorkOffer(
                round=self.number, micro_batch=micro_batch, tokens=self.ctx.rows_ref("tokens", first, rows, T),
                targets=self.ctx.rows_ref("targets", first, rows, T), grad_segment=self.ctx.segment_ref(slot),
                dloss=self.dloss if train else 0.0)))
        return made

    def rejected(self, micro_batch: int) -> None:
        self.ctx.release(self.offered.pop(micro_batch))
        self.waiting.appendleft(micro_batch)

    async def receive(self, part: Part) -> None:
        part = await self.combiner.combine(part)
        if self.combiner.order.covers(part):
            self.total = part
        else:
            self.combiner.keep(part)
