"""Optimizers over the flat parameter buffer, stepped by parameter slices across the pool.

Weight decay reaches only the matrices of the linear layers (an untied output head is one),
never biases, LayerNorm gains or the embeddings, unless ``decay_all`` is asked for.
"""

from dataclasses import dataclass

import numpy as np

from cllm.kernels.model import ParamLayout
from cllm.kernels.optim import adam_update, adamw_update, sgd_update

from ..settings import BETA, FLAG, NON_NEGATIVE, RATE, one_of, setting

ALIGN = 64  # slice boundaries on cache-line multiples of float32
KINDS = ("adamw", "adam", "sgd")


@dataclass(frozen=True)
class OptimizerConfig:
    kind: str = setting("adamw", one_of(KINDS), "the optimizer", name="optimizer")
    beta1: float = setting(0.9, BETA, "Adam's first beta, or SGD's momentum")
    beta2: float = setting(0.95, BETA, "Adam's second beta")
    eps: float = setting(1e-8, RATE, "Adam's epsilon")
    weight_decay: float = setting(0.0, NON_NEGATIVE, "decoupled weight decay of linear-layer weights")
    decay_all: bool = setting(False, FLAG, "decay biases, LayerNorm gains and embeddings too")
    nesterov: bool = setting(False, FLAG, "Nesterov momentum (sgd)")


def decays(name: str, decay_all: bool) -> bool:
    if decay_all:
        return True
    return name == "lm_head.weight" or (name.endswith(".weight") and (".attn." in name or ".mlp." in name))


def split_range(size: int, parts: int) -> list:
    """``parts`` contiguous (start, stop) ranges covering [0, size), aligned, none empty."""
    step = -(-size // parts)
    step = -(-step // ALIGN) * ALIGN
    return [(a, min(a + step, size)) for a in range(0, size, step)]


class Optimizer:
    """The optimizer's state (moments or momentum) and step count over the flat parameters."""

    def __init__(self, layout: ParamLayout, config: OptimizerConfig):
        self.config = config
        self.step = 0
        n_state = 1 if config.kind == "sgd" else 2
        self.state = np.zeros((n_state, layout.size), dtype=np.float32)
        self.pieces = [(layout.slice(name).start, layout.slice(name).stop, decays(name, config.decay_all))
                       for name in layout.shapes]

    def plan(self, parts: int) -> list:
        """For each of ``parts`` slices: the (start, stop, decays) pieces inside it."""
        plan = []
        for a, b in split_range(self.state.shape[1], parts):
            plan.append([(max(a, s), min(b, e), d) for s, e, d in self.pieces if s < b and e > a])
        return plan

    def update_slice(self, params: np.ndarray, grad: np.ndarray, pieces: list, lr: float, grad_scale: float) -> None:
        """Update the parameters of one slice; ``self.step`` is already the new step number."""
        c = self.config
        for a, b, decay in pieces:
            wd = c.weight_decay if decay else 0.0
            if c.kind == "sgd":
                sgd_update(params[a:b], grad[a:b], self.state[0, a:b], lr, c.beta1, c.nesterov, wd, self.step,
                           grad_scale)
            else:
                update = adamw_update if c.kind == "adamw" else adam_update
                update(params[a:b], grad[a:b], self.state[0, a:b], self.state[1, a:b], lr, c.beta1, c.beta2, c.eps,
                       wd, self.step, grad_scale)
