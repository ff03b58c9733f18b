"""Learning-rate schedules: pure functions of the step (counting from 1).

Every schedule but ``cyclical`` warms up linearly over ``warmup_steps`` from lr/warmup
to ``lr``, then holds (``constant``) or decays to the floor ``min_lr`` at ``decay_steps``
(``linear``, ``cosine``, ``exponential``) and stays there. ``cyclical`` is the triangular
cycle between ``min_lr`` and ``lr`` with ``cycle_steps`` steps per half cycle.
"""

import math
from dataclasses import dataclass

from ..settings import COUNT, NON_NEGATIVE, POSITIVE, one_of, setting

KINDS = ("constant", "linear", "cosine", "exponential", "cyclical")


@dataclass(frozen=True)
class Schedule:
    kind: str = setting("constant", one_of(KINDS), "the learning-rate schedule", name="lr_schedule")
    lr: float = setting(1e-3, NON_NEGATIVE, "the peak learning rate (0: the weights stay as they are)",
                        name="learning_rate")
    warmup_steps: int = setting(0, COUNT, "steps of linear warm-up to the learning rate")
    decay_steps: int = setting(0, COUNT, "the step at which a decaying schedule reaches min_lr (0: the run's steps)")
    min_lr: float = setting(0.0, NON_NEGATIVE, "the schedule's floor; > 0 for exponential")
    cycle_steps: int = setting(500, POSITIVE, "half period of the cyclical schedule, in steps")


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
