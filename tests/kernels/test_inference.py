"""The key-value cache path gives the logits of the full forward pass."""

import numpy as np

from cllm.kernels.inference import KVCache, step
from cllm.kernels.model import Activations, GPTConfig, ParamLayout, forward, init_params


def test_incremental_logits_equal_the_full_forward_pass():
    cfg = GPTConfig(vocab_size=40, block_size=24, n_layer=3, n_head=4, n_embd=32)
    params = init_params(cfg, seed=2)
    params += np.random.default_rng(3).normal(scale=0.05, size=params.shape).astype(np.float32)
    w = ParamLayout(cfg).tensors(params)
    tokens = np.random.default_rng(4).integers(0, 40, size=20).astype(np.int32)
    full = forward(w, Activations(cfg, 1, 20), tokens[None, :]).copy()

    cache = KVCache(cfg)
    got = [step(w, cache, tokens[:7])]  # the prompt at once
    for t in range(7, 20):  # then one position per token
        got.append(step(w, cache, tokens[t:t + 1]))
    np.testing.assert_allclose(np.concatenate(got), full, rtol=1e-4, atol=1e-5)
    assert cache.length == 20
