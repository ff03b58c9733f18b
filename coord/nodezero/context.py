"""The small context every sphere shares: the pool, the weights, the segments, the round's tokens.

Gradients, weights and tokens never travel inside a message: they live in the named buffers
here, and messages carry ``BufferRef``s that ``resolve`` turns back into arrays.
"""

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cllm.kernels.model import ParamLayout, Tensors
from cllm.kernels.reduce import sum_squares
from cllm.protocol.payloads import BufferRef

from ..training.optimizer import split_range
from .reduction import Part, joined

NORM_CHUNK = 1 << 14  # the gradient norm adds the squares of fixed chunks, so its bits do not depend on the pool


class SphereContext:
    def __init__(self, layout: ParamLayout, params: np.ndarray, read_weights, pool: ThreadPoolExecutor, slices: int,
                 timeout: float, dropout: float, seed: int):
        self.layout, self.pool, self.timeout = layout, pool, timeout
        self.read_weights = read_weights  # params -> the tensors the kernels read (float32, or rounded to bf16)
        self.dropout, self.seed = dropout, seed
        self.ranges = split_range(layout.size, slices)
        empty = np.zeros(0, dtype=np.int32)
        self.buffers = {"params": params, "segments": np.zeros((0, layout.size), np.float32), "tokens": empty,
                        "targets": empty}
        self.free = []  # segments not holding a gradient
        self.views = {}  # (buffer, offset) -> Tensors over it

    # ----- buffers -----

    def resolve(self, ref: BufferRef) -> np.ndarray:
        return self.buffers[ref.name].reshape(-1)[ref.offset:ref.offset + ref.length]

    def tensors(self, ref: BufferRef) -> Tensors:
        """The named tensors over a reference: the weights the kernels read, or a gradient segment."""
        key = ref.name, ref.offset
        if key not in self.views:
            flat = self.resolve(ref)
            self.views[key] = self.read_weights(flat) if ref.name == "params" else self.layout.tensors(flat)
        return self.views[key]

    def load(self, tokens: np.ndarray, targets: np.ndarray) -> None:
        """A round's rows (B,T) become the buffers its offers refer to."""
        self.buffers["tokens"], self.buffers["targets"] = tokens.reshape(-1), targets.reshape(-1)

    def rows_ref(self, name: str, first_row: int, rows: int, seq_len: int) -> BufferRef:
        return BufferRef(name=name, offset=first_row * seq_len, length=rows * seq_len, dtype="int32")

    def params_ref(self) -> BufferRef:
        return BufferRef(name="params", offset=0, length=self.layout.size)

    def segment_ref(self, slot: int) -> BufferRef:
        if slot < 0:
            return BufferRef(name="segments", offset=0, length=0)  # forward only: no gradient
        return BufferRef(name="segments", offset=slot * self.layout.size, length=self.layout.size)

    def segment(self, slot: int) -> np.ndarray:
        return self.buffers["segments"][slot]

    # ----- segments -----

    def reserve(self, count: int) -> None:
        """``count`` free segments (grown when a round needs more; kept across rounds)."""
        if len(self.buffers["segments"]) < count:
            self.buffers["segments"] = np.zeros((count, self.layout.size), np.float32)
            self.views = {key: view for key, view in self.views.items() if key[0] != "segments"}
        self.free = list(range(count - 1, -1, -1))

    def take(self) -> int | None:
        return self.free.pop() if self.free else None

    def release(self, slot: int) -> None:
        if slot >= 0:
            self.free.append(slot)

    # ----- running on the pool -----

    async def run(self, fn, *args):
        """``fn(*args)`` on a pool thread, awaited at most ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self.pool, fn, *args), self.timeout)

    async def split(self, fn, *args) -> list:
        """``fn(start, stop, *args)`` over the parameter slices at once; the results in slice order."""
        loop = asyncio.get_running_loop()
        parts = [loop.run_in_executor(self.pool, fn, a, b, *args) for a, b in self.ranges]
        return await asyncio.wait_for(asyncio.gather(*parts), self.timeout)

    async def add(self, left: Part, right: Part) -> Part:
        """``left`` + ``right`` (adjacent ranges), into the left one's segment; the right one's is freed."""
        started = time.perf_counter()
        if left.slot >= 0:
            await self.split(add_slice, self.segment(left.slot), self.segment(right.slot))
            self.release(right.slot)
        return joined(left, right, time.perf_counter() - started)

    async def norm(self, grad: np.ndarray) -> float:
        """The global L2 norm of ``grad``: fixed chunks' sums of squares in float64, added exactly."""
        sums = await self.split(chunk_squares, grad)
        return math.sqrt(math.fsum(s for part in sums for s in part))


def add_slice(start: int, stop: int, out: np.ndarray, x: np.ndarray) -> None:
    np.add(out[start:stop], x[start:stop], out=out[start:stop])


def chunk_squares(start: int, stop: int, x: np.ndarray) -> list:
    """Sums of squares of the NORM_CHUNK chunks that start in [start, stop)."""
    first = -(-start // NORM_CHUNK) * NORM_CHUNK
    return [sum_squares(x, a, min(a + NORM_CHUNK, len(x))) for a in range(first, stop, NORM_CHUNK)]
