"""`diverge.py ARGS...`: `cllm ARGS` on every rank, where one of rank 1's weights moves by 1e-3 after step 5
(one bit might be rounded away by the next updates)."""

import sys

import numpy as np

from cllm.coord.cli.main import main
from cllm.coord.training.trainer import Trainer

after_step = Trainer.after_step


def nudged(self, result, lr):
    after_step(self, result, lr)
    if self.ranks.rank == 1 and result.step == 5:
        self.params[17] += np.float32(1e-3)


Trainer.after_step = nudged
sys.exit(main(sys.argv[1:]))
