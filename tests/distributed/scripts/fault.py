"""Two ranks in a loop of gradient-sized Allreduces until rank 1 fails as told: `fault.py MODE TIMEOUT`.

MODE kill: rank 1 dies (SIGKILL); stop: rank 1 freezes (SIGSTOP); stray: rank 1's event loop
stays alive but never reaches the next collective. Rank 0 prints `step N` after each step.
"""

import asyncio
import os
import signal
import sys

import numpy as np

from cllm.coord.distributed.ranks import join
from cllm.coord.logs import configure

FAIL_AT = 3


async def main(mode: str, timeout: float):
    ranks = join(timeout)
    configure("json", rank=ranks.rank)
    ranks.start()
    grad = np.ones(1 << 18, dtype=np.float32)
    for step in range(1, 1000):
        if ranks.rank == 1 and step == FAIL_AT:
            print(f"rank 1 pid {os.getpid()} fails: {mode}", file=sys.stderr, flush=True)
            if mode == "stray":
                await asyncio.sleep(3600)
            os.kill(os.getpid(), signal.SIGKILL if mode == "kill" else signal.SIGSTOP)
        await ranks.allreduce(grad, f"the gradient allreduce of step {step}")
        if ranks.rank == 0:
            print(f"step {step}", flush=True)
        await asyncio.sleep(0.05)


asyncio.run(main(sys.argv[1], float(sys.argv[2])))
