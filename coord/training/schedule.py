"""Learning-rate schedules: pure functions of the step (counting from 1), and for ``plateau`` of
how many times the validation loss has stalled.

Every schedule but ``cyclical`` warms up linearly over ``warmup_steps`` from lr/warmup
to ``lr``, then holds (``constant``) or decays to the floor ``min_lr`` at ``decay_steps``
(``linear``, ``cosine``, ``exponential``) and stays there. ``cyclical`` is the triangular
cycle between ``min_lr`` and ``lr`` with ``cycle_steps`` steps per half cycle. ``plateau``
holds ``lr`` and multiplies it by ``lr_factor`` each time the validation loss has not
improved for ``lr_patience`` evaluations, down to ``min_lr``; ``Plateau`` counts those
evaluations and reductions, and a checkpoint keeps both, so a resumed run stays bit for bit.
"""

import math
from dataclasses import dataclass

from ..settings import COUNT, NON_NEGATIVE, POSITIVE, Rule, one_of, setting

KINDS = ("constant", "linear", "cosine", "exponential", "cyclical", "plateau")
FACTOR = Rule(float, "a number in (0, 1)", lambda v: 0 < v < 1)


@dataclass(frozen=True)
class Schedule:
    kind: str = setting("constant", one_of(KINDS), "the learning-rate schedule", name="lr_schedule")
    lr: float = setting(1e-3, NON_NEGATIVE, "the peak learning rate (0: the weights stay as they are)",
                        name="learning_rate")
    warmup_steps: int = setting(0, COUNT, "steps of linear warm-up to the learning rate")
    decay_steps: int = setting(0, COUNT, "the step at which a decaying schedule reaches min_lr (0: the run's steps)")
    min_lr: float = setting(0.0, NON_NEGATIVE, "the schedule's floor; > 0 for exponential")
    cycle_steps: int = setting(500, POSITIVE, "half period of the cyclical schedule, in steps")
    factor: float = setting(0.5, FACTOR, "plateau: what the learning rate is multiplied by when the validation "
                                         "loss stalls", name="lr_factor")
    patience: int = setting(3, POSITIVE, "plateau: evaluations without a better validation loss before the "
                                         "learning rate is reduced", name="lr_patience")


@dataclass
class Plateau:
    """The plateau schedule's memory: the best validation loss, the evaluations since it (or since the
    last reduction), and how many reductions there have been."""

    best: float = math.inf
    stalled: int = 0
    reductions: int = 0

    def observe(self, s: Schedule, val_loss: float) -> bool:
        """Count one evaluation; True when it reduces the learning rate."""
        if val_loss < self.best:
            self.best, self.stalled = val_loss, 0
            return False
        self.stalled += 1
        if self.stalled < s.patience:
            return False
        self.stalled, self.reductions = 0, self.reductions + 1
        return True


def progress(s: Schedule, step: int) -> float:
    """How far ``step`` is from the end of warm-up to ``decay_steps``, in [0, 1]."""
    span = s.decay_steps - s.warmup_steps
    if span <= 0:
        return 1.0
    return min(1.0, max(0.0, (step - s.warmup_steps) / span))


def learning_rate(s: Schedule, step: int, reductions: int = 0) -> float:
    """The learning rate of ``step``; ``reductions`` is the plateau schedule's count (Plateau.reductions)."""
    if s.kind == "cyclical":
        half = s.cycle_steps
        cycle = math.floor(1 + (step - 1) / (2 * half))
        x = abs((step - 1) / half - 2 * cycle + 1)
        return s.min_lr + (s.lr - s.min_lr) * max(0.0, 1.0 - x)
    if step <= s.warmup_steps:
        return s.lr * step / s.warmup_steps
    if s.kind == "constant":
        return s.lr
    if s.kind == "plateau":
        return max(s.min_lr, s.lr * s.factor ** reductions)
    p = progress(s, step)
    if s.kind == "linear":
        return s.lr + (s.min_lr - s.lr) * p
    if s.kind == "cosine":
        return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1.0 + math.cos(math.pi * p))
    if s.kind == "exponential":
        return s.lr * (s.min_lr / s.lr) ** p
    raise ValueError(f"unknown schedule {s.kind!r}")
