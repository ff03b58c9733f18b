"""`diverge.py ARGS...`: `cllm ARGS` on every rank, where one bit of one of rank 1's weights flips after step 5.

The bit is the tenth of the mantissa: a flip of the last bit can be rounded away by the next steps' updates
(as a weight grows past a power of two), and the ranks would agree again before anyone checked."""

import sys

import numpy as np

from cllm.coord.cli.main import main
from cllm.coord.training.trainer import Trainer

record = Trainer.record


def nudged(self, result, batch):
    record(self, result, batch)
    if self.ranks.rank == 1 and result.step == 5:
        self.params[17:18].view(np.uint32)[0] ^= np.uint32(1 << 13)


Trainer.record = nudged
sys.exit(main(sys.argv[1:]))
