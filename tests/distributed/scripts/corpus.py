"""`corpus.py CORPUS CACHE_ROOT shared|per-rank|different`: each rank's corpus through shared_dataset.

Prints (rank 0 on standard output, rank 1 on standard error) one JSON object: where the ids
came from, how many, a digest, and what the rank's cache directory holds afterwards.
"""

import hashlib
import json
import sys
from pathlib import Path

from cllm.coord.distributed.data import shared_dataset
from cllm.coord.distributed.ranks import join
from cllm.coord.errors import UserError
from cllm.coord.logs import configure

corpus, root, layout = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ranks = join(timeout=60.0)
configure("json", "warning", rank=ranks.rank)
ranks.start()
cache = root / ("cache" if layout == "shared" else f"cache-{ranks.rank}")
if layout == "different" and ranks.rank == 1:
    corpus = corpus.with_name("other.txt")
out = {"rank": ranks.rank}
try:
    dataset = shared_dataset(ranks, corpus, "bpe", 300, cache)
    out.update(entry=str(dataset.entry), tokens=len(dataset.tokens),
               digest=hashlib.blake2b(dataset.tokens, digest_size=8).hexdigest(),
               cache=sorted(p.name for p in cache.iterdir()) if cache.exists() else None)
except UserError as error:
    out["error"] = str(error)
ranks.close()
print(json.dumps(out), file=sys.stderr if ranks.rank else sys.stdout, flush=True)
