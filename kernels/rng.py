"""Counter-based random bits for dropout: a pure function of (key, coordinates), no state.

A mask is never stored: the backward pass recomputes it from the same coordinates, and
since a sequence is named by its global row in the step's batch, the mask does not depend
on how the batch is split across workers. ``mix64`` is the splitmix64 finaliser (a
bijection on 64-bit words with full avalanche).
"""

import numpy as np

from .jit import kernel

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
KEEP_BITS = 24  # a keep decision compares the top 24 bits of a hash with the threshold


@kernel
def mix64(x):
    x = np.uint64(x)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@kernel
def stream(key, a, b):
    """A 64-bit stream id for coordinates (a, b) under ``key``, e.g. (global row, head)."""
    return mix64(np.uint64(key) ^ mix64(np.uint64(a) * GOLDEN + np.uint64(b)))


@kernel
def keep(stream_id, i, j, threshold):
    """True when element (i, j) of ``stream_id`` survives dropout at ``threshold``."""
    h = mix64(np.uint64(stream_id) ^ mix64(np.uint64(i) * GOLDEN + np.uint64(j)))
    return (h >> np.uint64(64 - KEEP_BITS)) >= np.uint64(threshold)


def drop_threshold(p: float) -> int:
    """The threshold that drops a fraction ``p`` of elements (to 2**-24)."""
    return int(round(p * (1 << KEEP_BITS)))


def dropout_key(seed: int, step: int, layer: int) -> int:
    """The 64-bit key of one layer's dropout in one step of a run."""
    return int(stream(np.uint64(seed & (2**64 - 1)), np.uint64(step), np.uint64(layer)))
