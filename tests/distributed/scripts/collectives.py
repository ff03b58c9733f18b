"""Every collective of Ranks on real data; each rank prints one JSON object of what it saw.

Rank 0 prints on standard output, rank 1 on standard error: mpiexec forwards the ranks'
output in chunks, and two ranks' lines on one stream can interleave.
"""

import asyncio
import json
import sys

import numpy as np

from cllm.coord.distributed.decision import Decision
from cllm.coord.distributed.ranks import join
from cllm.coord.errors import RunFailed, UserError


async def main():
    ranks = join(timeout=20.0)
    ranks.start()
    r, out = ranks.rank, {"rank": ranks.rank, "size": ranks.size, "share": ranks.share(7)}

    grad = np.arange(10, dtype=np.float32) * (r + 1)  # the sum over 2 ranks is 3 * arange
    await ranks.allreduce(grad, "a float32 sum")
    out["sum32"] = grad.tolist()
    loss = np.array([0.1 * (r + 1), 1e-9], dtype=np.float64)
    await ranks.allreduce(loss, "a float64 sum")
    out["sum64"] = loss.tolist()

    bucketed = np.ones(1000, dtype=np.float32) * (r + 1)
    buckets = ranks.buckets(bucketed, [(900, 1000), (500, 900), (0, 500)], "bucketed sum")
    buckets.ready(2)  # out of order: held back until buckets 0 and 1 have gone
    buckets.ready(0)
    await asyncio.sleep(0.01)
    out["issued_early"] = len(buckets.issued)
    await buckets.wait()
    out["bucketed"] = sorted(set(bucketed.tolist()))

    out["quiet"] = vars(await ranks.agree(Decision()))
    asked = Decision(pause=True, workers=3) if r == 0 else Decision(checkpoint=True, workers=9)
    out["rank0_decides"] = vars(await ranks.agree(asked))
    out["any_rank_stops"] = vars(await ranks.agree(Decision(stop=r == 1)))

    grad = np.full(1000, 0.5 * (r + 1), dtype=np.float32)
    loss_sum, tokens = await ranks.sum_step(grad, [(600, 1000), (0, 600)], 10.25 + r, 64, step=7)
    out["step"] = [sorted(set(grad.tolist())), loss_sum, tokens]
    out["scores"] = await ranks.sum_scores(2.5 * (r + 1), 100, 30 + r)
    node_zero = {"batches": 2, "tokens": 256, "busy_s": 1.0 + r, "waiting_s": 0.25,
                 "children": [{"sphere": 1, "group": 0, "batches": 2, "tokens": 256, "busy_s": 1.0 + r,
                               "waiting_s": 0.25, "children": []}]}
    out["stats"] = await ranks.gather_stats(node_zero)
    out["gathered"] = await ranks.gather({"rank": r, "busy_s": 1.5 * r}, "statistics")
    await ranks.check_same(b"same settings", "settings")
    try:
        await ranks.check_same(f"settings of rank {r}".encode(), "settings")
    except UserError as error:
        out["different_settings"] = str(error)

    params = np.linspace(-1, 1, 4096, dtype=np.float32)
    await ranks.check_weights(params, step=100)
    if r == 1:
        params[17] = np.nextafter(params[17], np.float32(2))  # one bit apart
    try:
        await ranks.check_weights(params, step=200)
    except RunFailed as error:
        out["diverged"] = str(error)
    out["collectives"] = ranks.stats()["collectives"]
    ranks.close()
    print(json.dumps(out), file=sys.stderr if r else sys.stdout, flush=True)


asyncio.run(main())
