"""`diverge.py ARGS...`: `cllm ARGS` on every rank, where rank 1's weights move by one bit after step 5."""

import sys

import numpy as np

from cllm.coord.cli.main import main
from cllm.coord.training.trainer import Trainer

after_step = Trainer.after_step


def nudged(self, result, lr):
    after_step(self, result, lr)
    if self.ranks.rank == 1 and result.step == 5:
        self.params[17] = np.nextafter(self.params[17], np.float32(2))


Trainer.after_step = nudged
sys.exit(main(sys.argv[1:]))
