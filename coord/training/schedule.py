"""Learning-rate schedules: pure functions of the step (counting from 1).

Every schedule but ``cyclical`` warms up linearly over ``warmup_steps`` from lr/warmup
to ``lr``, then holds (``constant``) or decays to the floor ``min_lr`` at ``decay_steps``
(``linear``, ``cosine``, ``exponential``) and stays there. ``cyclical`` is the triangular
cycle between ``min_lr`` and ``lr`` with ``cycle_steps`` steps per half cycle.
"""

import math
from dataclasses import dataclass

KINDS = ("constant", "linear", "cosine", "exponential", "cyclical")


@dataclass(frozen=True)
class Schedule:
    kind: str = "constant"
    lr: float = 1e-3
    warmup_steps: int = 0
    decay_steps: int = 0  # the step at which a decaying schedule reaches min_lr
    min_lr: float = 0.0
    cycle_steps: int = 1000


def progress(s: Schedule, step: int) -> float:
    """How far ``step`` is from the end of warm-up to ``decay_steps``, in [0, 1]."""
    span = s.decay_steps - s.warmup_steps
    if span <= 0:
        return 1.0
    return min(1.0, max(0.0, (step - s.warmup_steps) / span))


def learning_rate(s: Schedule, step: int) -> float:
    if s.kind == "cyclical":
        half = s.cycle_steps
        cycle = math.floor(1 + (step - 1) / (2 * half))
        x = abs((step - 1) / half - 2 * cycle + 1)
        return s.min_lr + (s.lr - s.min_lr) * max(0.0, 1.0 - x)
    if step <= s.warmup_steps:
        return s.lr * step / s.warmup_steps
    if s.kind == "constant":
        return s.lr
    p = progress(s, step)
    if s.kind == "linear":
        return s.lr + (s.min_lr - s.lr) * p
    if s.kind == "cosine":
        return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1.0 + math.cos(math.pi * p))
    if s.kind == "exponential":
        return s.lr * (s.min_lr / s.lr) ** p
    raise ValueError(f"unknown schedule {s.kind!r}")
