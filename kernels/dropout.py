"""Dropout whose mask is a pure function of where an element is, never of who computes it.

Each element's keep/drop decision hashes (key, site, global row, position, channel) with
the splitmix64 finaliser: ``key`` comes from (seed, step), ``site`` names the place in the
model (the embedding, or one layer's attention or MLP residual branch), the row is the
sequence's index in the step's whole batch. So a micro-batch gives the same mask on any
worker, the backward pass recomputes the mask instead of storing it, and a resumed run
drops exactly what an uninterrupted one would have.

An element is kept when the top 32 bits of its hash are at least ``threshold`` =
round(p * 2**32); kept elements are scaled by 1 / (1 - p).
"""

from typing import NamedTuple

import numpy as np

from .jit import kernel

MASK64 = (1 << 64) - 1
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
EMBEDDING_SITE = 0


def attention_site(layer: int) -> int:
    """The site of a layer's attention probabilities."""
    return 1 + 3 * layer


def attention_residual_site(layer: int) -> int:
    return 2 + 3 * layer


def mlp_residual_site(layer: int) -> int:
    return 3 + 3 * layer


@kernel
def mix64(z):
    # the splitmix64 finaliser: a bijection of uint64 that scatters every input bit
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


@kernel
def chain(z, counter):
    # the hash of z followed by one more counter
    return mix64(z + np.uint64(counter) * GOLDEN)


def link(z: int, counter: int) -> int:
    """``chain`` in plain Python integers: the specification the kernels follow."""
    z = (z + counter * int(GOLDEN)) & MASK64
    z = ((z ^ (z >> 30)) * int(MIX1)) & MASK64
    z = ((z ^ (z >> 27)) * int(MIX2)) & MASK64
    return z ^ (z >> 31)


def step_key(seed: int, step: int) -> int:
    """The 64-bit key of a training step's dropout masks."""
    return link(link(0, seed), step)


def site_key(key: int, site: int) -> int:
    """The key of one site's mask within a step."""
    return link(key, site)


class Dropout(NamedTuple):
    """What a micro-batch's dropout needs: the probability, the step's key and the micro-batch's
    first row in the step's batch (rows of all micro-steps of a step numbered together)."""

    p: float
    key: int
    first_row: int

    @property
    def threshold(self) -> int:
        return min(int(round(self.p * 2**32)), 2**32)

    @property
    def scale(self) -> float:
        return 1.0 / (1.0 - self.p)

    def at(self, site: int) -> tuple:
        """The mask arguments of the kernels below for ``site``: (key, first_row, threshold, scale)."""
        return np.uint64(site_key(self.key, site)), self.first_row, self.threshold, self.scale


@kernel
def row_seed(key, row, t):
    # the seed of position t of global row ``row``, from which each channel's bits follow
    return chain(chain(np.uint64(key), row), t)


@kernel
def keep_factor(seed, c, threshold, scale):
    # scale if channel c is kept, else 0
    return scale if (chain(seed, c + 1) >> np.uint64(32)) >= np.uint64(threshold) else 0.0


@kernel
def dropout_forward(x, T, key, first_row, threshold, scale):
    # x (B*T,C) in place: each element kept and scaled, or zeroed. Its own backward too:
    # applied to the gradient it gives the gradient of the input.
    N, C = x.shape
    for i in range(N):
        seed = row_seed(key, first_row + i // T, i % T)
        for c in range(C):
            x[i, c] *= keep_factor(seed, c, threshold, scale)


@kernel
def dropout_copy(out, x, T, key, first_row, threshold, scale):
    # out (B*T,C) = x with the mask of dropout_forward
    N, C = x.shape
    for i in range(N):
        seed = row_seed(key, first_row + i // T, i % T)
        for c in range(C):
            out[i, c] = x[i, c] * keep_factor(seed, c, threshold, scale)


@kernel
def bias_dropout_residual(out, bias, residual, T, key, first_row, threshold, scale):
    # out (B*T,C): a projection's product in, residual + dropout(product + bias) out
    N, C = out.shape
    for i in range(N):
        seed = row_seed(key, first_row + i // T, i % T)
        for c in range(C):
            out[i, c] = residual[i, c] + (out[i, c] + bias[c]) * keep_factor(seed, c, threshold, scale)


def reference_keep(key: int, row: int, t: int, c: int, p: float) -> bool:
    """The keep decision of element (row, t, c) of a site with key ``key``, in plain Python."""
    return (link(link(link(key, row), t), c + 1) >> 32) >= Dropout(p, key, 0).threshold
