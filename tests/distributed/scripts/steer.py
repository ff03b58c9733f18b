"""`steer.py OUT ARGS...`: `cllm ARGS` on every rank, steered as the daemon steers a run, from rank 0 (and a
stop from rank 1); rank 0 writes what its requests were answered to OUT as JSON.

After step 3 rank 0 asks for the statistics and for two workers a rank, after step 5 for the statistics again
and a checkpoint, after step 7 for a pause (resumed half a second later); after step 10 rank 1 asks to stop.
"""

import asyncio
import json
import sys

from cllm.coord.cli.main import main
from cllm.protocol import payloads as pl
from cllm.protocol.messages import MessageType as M
from cllm.coord.training.trainer import Trainer

out, args = sys.argv[1], sys.argv[2:]
record = Trainer.record
answers = {}


def steered(self, result, batch):
    record(self, result, batch)
    step = result.step
    if self.ranks.rank == 0:
        if step == 3:
            answers["stats_1"] = self.ask(M.STATS_REQUEST, pl.StatsRequest())
            answers["workers"] = self.ask(M.CHILD_SPAWN, pl.ChildCount(count=2))
        if step == 5:
            answers["stats_2"] = self.ask(M.STATS_REQUEST, pl.StatsRequest())
            answers["checkpoint"] = self.ask(M.TWIN_PRIME_HIT, pl.IntervalHit(step=step, kind="checkpoint"))
        if step == 7:
            answers["pause"] = self.pause()
            asyncio.get_running_loop().call_later(0.5, self.resume)
    elif step == 10:
        self.request_stop("rank 1 asked")


Trainer.record = steered
status = main(args)
if answers:
    with open(out, "w") as f:
        json.dump({name: future.result() for name, future in answers.items()}, f)
sys.exit(status)
