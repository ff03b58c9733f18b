"""`diverge.py ARGS...`: `cllm ARGS` on every rank, where rank 1's weights move by one bit after step 5."""

import sys

import numpy as np

from cllm.coord.cli.main import main
from cllm.coord.training.trainer import Trainer

record = Trainer.record


def nudged(self, result, batch):
    record(self, result, batch)
    if self.ranks.rank == 1 and result.step == 5:
        self.params[17] = np.nextafter(self.params[17], np.float32(2))


Trainer.record = nudged
sys.exit(main(sys.argv[1:]))
