"""Deterministic reduction: a round's micro-batch gradients summed in one fixed pairwise order.

The micro-batches [0, count) of a round are the leaves of a fixed binary tree: a range
[a, b) is the sum of [a, m) and [m, b) with m = (a + b) // 2. Every inner node is one
float32 addition of its two halves, wherever it happens (in a group or at Node Zero) and
whichever workers computed the halves; so the round's sum is bitwise the same for a given
micro-batch count, whatever the worker count, the tree or the timing. (Two MPI ranks split
a step where this tree does, ``coord/distributed/ranks.share``.)

Adjacent ranges combine as soon as both are complete, so only the ranges still waiting for a
neighbour hold a gradient segment: memory is bounded by the workers and the tree's depth,
not by the micro-batch count.
"""

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Part:
    """The sum over micro-batches [first, stop) of a round."""

    first: int
    stop: int
    slot: int  # the segment holding the gradient sum; -1 when there is none (evaluation)
    tokens: int
    loss_sum: float
    busy_s: float  # kernel seconds spent on the range, its sums included
    hits: int = 0  # evaluation: the tokens whose target was the likeliest

    @property
    def last(self) -> int:
        return self.stop - 1


class PairwiseOrder:
    """The fixed tree over micro-batches [0, count)."""

    def __init__(self, count: int):
        self.count = count

    def sibling(self, first: int, stop: int) -> tuple | None:
        """The range [first, stop) is added to, or None for the whole round."""
        lo, hi = 0, self.count
        while (lo, hi) != (first, stop):
            if hi - lo < 2:
                raise ValueError(f"[{first}, {stop}) is not a range of the pairwise order over {self.count}")
            mid = (lo + hi) // 2
            if stop <= mid:
                if (first, stop) == (lo, mid):
                    return mid, hi
                hi = mid
            else:
                if (first, stop) == (mid, hi):
                    return lo, mid
                lo = mid
        return None

    def covers(self, part: Part) -> bool:
        return (part.first, part.stop) == (0, self.count)


class Combiner:
    """The ranges of one round waiting at one sphere for their sibling.

    ``add(left, right)`` is the sum of two adjacent parts (a coroutine: it runs on the pool).
    """

    def __init__(self, count: int, add):
        self.order = PairwiseOrder(count)
        self.add = add
        self.waiting = {}  # (first, stop) -> Part

    async def combine(self, part: Part) -> Part:
        """``part`` summed with its waiting sibling, and the result with its own, as far as they are here."""
        while (sibling := self.order.sibling(part.first, part.stop)) is not None and sibling in self.waiting:
            other = self.waiting.pop(sibling)
            part = await (self.add(other, part) if other.first < part.first else self.add(part, other))
        return part

    def keep(self, part: Part) -> None:
        self.waiting[part.first, part.stop] = part

    def sibling_of(self, part: Part) -> tuple | None:
        return self.order.sibling(part.first, part.stop)


def joined(left: Part, right: Part, seconds: float) -> Part:
    """The record of ``left`` + ``right``, the sum kept in the left one's segment."""
    return replace(left, stop=right.stop, tokens=left.tokens + right.tokens, loss_sum=left.loss_sum + right.loss_sum,
                   busy_s=left.busy_s + right.busy_s + seconds, hits=left.hits + right.hits)
