"""What every rank does at a step boundary, agreed through a sum-Allreduce of a few words.

Rank 0 takes the control requests (pause, resume, checkpoint, stats, a worker count, a reload) and writes
them; every other rank writes zeros, so the sum is rank 0's decision. A stop is the exception:
any rank may ask for one (a signal can reach the ranks at different moments), and a sum above
zero stops them all at the same boundary. The words are agreed at the boundary where rank 0
took the requests (one small collective, microseconds, against a step of seconds), so every
rank acts on them there, not a step later.
"""

from dataclasses import dataclass, fields

import numpy as np


@dataclass(frozen=True)
class Decision:
    stop: bool = False
    pause: bool = False
    resume: bool = False
    checkpoint: bool = False
    stats: bool = False
    reload: bool = False  # rank 0's reloaded settings follow, broadcast: every rank applies them here
    workers: int = 0  # worker threads on every rank from this boundary on; 0: unchanged


NAMES = tuple(f.name for f in fields(Decision))
WORDS = len(NAMES)
ANY_RANK = {"stop"}  # what a rank other than 0 may ask for


def write(words: np.ndarray, decision: Decision, rank: int) -> None:
    """This rank's share of the sum into ``words`` (WORDS long)."""
    for i, name in enumerate(NAMES):
        words[i] = float(getattr(decision, name)) if rank == 0 or name in ANY_RANK else 0.0


def read(words: np.ndarray) -> Decision:
    """The decision from the summed words."""
    values = {name: int(round(float(words[i]))) for i, name in enumerate(NAMES)}
    return Decision(**{name: value if name == "workers" else value > 0 for name, value in values.items()})
