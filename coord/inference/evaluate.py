"""Loss and perplexity of a model on a corpus, batches spread over the cores."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from cllm.kernels.model import Activations, GPTConfig, ParamLayout, scores

from ..nodezero.node_zero import usable_cores


def evaluate_checkpoint(cfg: GPTConfig, params: np.ndarray, dataset, batch_size: int, max_batches: int,
                        split: str) -> tuple:
    """(mean cross-entropy, token accuracy, tokens scored) over windows of ``cfg.block_size`` across the
    split; the accuracy is the share of positions whose next token is the model's likeliest."""
    tokens = dataset.tokens if split == "all" else dataset.val
    batches = dataset.spread_batches(tokens, batch_size, cfg.block_size, max_batches)
    weights = ParamLayout(cfg).tensors(params)
    threads = min(usable_cores(), len(batches))
    shapes = {x.shape for x, _ in batches}
    acts = [{shape: Activations(cfg, *shape) for shape in shapes} for _ in range(threads)]

    def score(worker: int) -> tuple:
        parts = [scores(weights, acts[worker][x.shape], x, y) for x, y in batches[worker::threads]]
        return sum(loss for loss, _ in parts), sum(hits for _, hits in parts)

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(score, range(threads)))
    count = sum(x.size for x, _ in batches)
    return sum(loss for loss, _ in parts) / count, sum(hits for _, hits in parts) / count, count
