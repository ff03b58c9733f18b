"""The optimizer step, split by parameter slices so every pool thread updates its own range.

Decoupled weight decay reaches only the matrices of the linear layers, never biases,
LayerNorm gains or the embeddings, unless ``decay_all`` is asked for.
"""

from dataclasses import dataclass

import numpy as np

from cllm.kernels.model import ParamLayout
from cllm.kernels.optim import adamw_update

ALIGN = 64  # slice boundaries on cache-line multiples of float32


@dataclass(frozen=True)
class AdamWConfig:
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    decay_all: bool = False


def decays(name: str, decay_all: bool) -> bool:
    if decay_all:
        return True
    return name.endswith(".weight") and (".attn." in name or ".mlp." in name)


def split_range(size: int, parts: int) -> list:
    """``parts`` contiguous (start, stop) ranges covering [0, size), aligned, none empty."""
    step = -(-size // parts)
    step = -(-step // ALIGN) * ALIGN
    return [(a, min(a + step, size)) for a in range(0, size, step)]


class AdamW:
    """AdamW state (first and second moments) over the flat parameter buffer."""

    def __init__(self, layout: ParamLayout, config: AdamWConfig):
        self.config = config
        self.m = np.zeros(layout.size, dtype=np.float32)
        self.v = np.zeros(layout.size, dtype=np.float32)
        self.step = 0
        self.pieces = [(layout.slice(name).start, layout.slice(name).stop, decays(name, config.decay_all))
                       for name in layout.shapes]

    def plan(self, parts: int) -> list:
        """For each of ``parts`` slices: the (start, stop, decays) pieces inside it."""
        plan = []
        for a, b in split_range(self.m.size, parts):
            plan.append([(max(a, s), min(b, e), d) for s, e, d in self.pieces if s < b and e > a])
        return plan

    def update_slice(self, params: np.ndarray, grad: np.ndarray, pieces: list, lr: float, grad_scale: float) -> None:
        """Update the parameters of one slice; ``self.step`` is already the new step number."""
        c = self.config
        for a, b, decay in pieces:
            adamw_update(params[a:b], grad[a:b], self.m[a:b], self.v[a:b], lr, c.beta1, c.beta2, c.eps,
                         c.weight_decay if decay else 0.0, self.step, grad_scale)
