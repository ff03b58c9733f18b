"""The key-value cache path gives the logits of the full forward pass; its attention is causal softmax attention."""

import numpy as np

from cllm.kernels.inference import KVCache, cached_attention, step
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
    last = step(w, KVCache(cfg), tokens[:7], last=True)  # a prompt's pass for its last position alone
    assert last.shape == (1, 40)
    np.testing.assert_allclose(last[0], got[0][-1], rtol=1e-5, atol=1e-6)  # a one-row product rounds its own way


def test_cached_attention_is_the_float64_causal_softmax_attention_even_for_scores_in_the_thousands():
    rng = np.random.default_rng(5)
    H, hs, T, start, n = 3, 16, 40, 29, 4
    k, v = rng.normal(size=(H, T, hs)), rng.normal(size=(H, T, hs))
    qkv = rng.normal(size=(n, 3 * H * hs))
    for scale in (0.25, 300.0):  # the second gives scores of about a thousand: only the largest counts
        out = np.empty((n, H * hs), np.float32)
        cached_attention(out, qkv.astype(np.float32), k.astype(np.float32), v.astype(np.float32), start, scale)
        for i in range(n):
            for h in range(H):
                scores = k[h, :start + i + 1] @ qkv[i, h * hs:(h + 1) * hs] * scale
                p = np.exp(scores - scores.max())
                expected = p @ v[h, :start + i + 1] / p.sum()
                tolerance = 1e-5 if scale < 1 else 1e-4  # scores of 1e3 carry float32 roundings of 1e-4
                np.testing.assert_allclose(out[i, h * hs:(h + 1) * hs], expected, rtol=0, atol=tolerance)
