"""Inference with a key-value cache: each new token costs one position, not the whole context.

``step`` runs n new tokens of one sequence through the model, appending their keys and
values to the cache, and returns their logits. It reuses the training kernels for the
per-token layers; only attention against the cache is its own kernel.

A step of one token is a chain of matrix-vector products (``blas.gemm`` sends a one-row
product to gemv), which read every weight once: GPT-2 124M's 500 MB a token, so the step is
bound by memory bandwidth. It runs on the BLAS threads its caller allows; generation
(``coord.inference.sampling``) measures whether one or all of them is faster at the time.
"""

import numpy as np

from .gelu import ACTIVATIONS
from .jit import kernel
from .layernorm import layernorm_forward
from .linear import linear_forward, linear_residual_forward
from .model import GPTConfig, Tensors
from .vecmath import LOG2E, exp2_nonpositive, maxnum_of_numbers, unreassociated


@kernel
def cached_attention(out, qkv, k_cache, v_cache, start, scale):
    # qkv (n,3C) for positions start..start+n-1, whose k and v are already in the caches
    # (H,maxT,hs); out (n,C): each query attends to every cached position up to its own. In the
    # dtype of qkv, each loop over a row of the cache or the head size: they vectorise
    n = qkv.shape[0]
    H, _, hs = k_cache.shape
    t = qkv.dtype.type
    sc, log2e = t(scale), t(LOG2E)
    scores = np.empty(start + n, qkv.dtype)
    acc = np.empty(hs, qkv.dtype)
    for i in range(n):
        last = start + i
        for h in range(H):
            q = qkv[i, h * hs:(h + 1) * hs]
            mx = t(-np.inf)
            for j in range(last + 1):
                s = t(0.0)
                for d in range(hs):
                    s += q[d] * k_cache[h, j, d]
                scores[j] = s * sc
                mx = maxnum_of_numbers(mx, scores[j])
            offset = unreassociated(mx * log2e)
            total = t(0.0)
            for j in range(last + 1):
                e = exp2_nonpositive(scores[j] * log2e - offset)
                scores[j] = e
                total += e
            acc[:] = 0.0
            for j in range(last + 1):
                p = scores[j]
                for d in range(hs):
                    acc[d] += p * v_cache[h, j, d]
            inv = t(1.0) / total
            for d in range(hs):
                out[i, h * hs + d] = acc[d] * inv


@kernel
def store_kv(k_cache, v_cache, qkv, start):
    # copy the keys and values of qkv (n,3C) into the caches (H,maxT,hs) at start..start+n-1
    n = qkv.shape[0]
    H, _, hs = k_cache.shape
    C = H * hs
    for i in range(n):
        for h in range(H):
            for d in range(hs):
                k_cache[h, start + i, d] = qkv[i, C + h * hs + d]
                v_cache[h, start + i, d] = qkv[i, 2 * C + h * hs + d]


class KVCache:
    """Keys and values of every layer for up to ``block_size`` positions of one sequence."""

    def __init__(self, cfg: GPTConfig):
        self.cfg = cfg
        shape = (cfg.n_layer, cfg.n_head, cfg.block_size, cfg.head_size)
        self.k = np.zeros(shape, dtype=np.float32)
        self.v = np.zeros(shape, dtype=np.float32)
        self.length = 0

    def clear(self) -> None:
        self.length = 0


def step(w: Tensors, cache: KVCache, tokens: np.ndarray, last: bool = False) -> np.ndarray:
    """Run ``tokens`` (n,) int at positions cache.length.. ; returns their logits (n,V), or with
    ``last`` the last position's alone (1,V): a prompt's pass then skips the head's product for the
    others (for GPT-2 124M, 77 GFLOP of a 1000-token prompt)."""
    cfg = cache.cfg
    n, C, start = len(tokens), cfg.n_embd, cache.length
    if start + n > cfg.block_size:
        raise ValueError(f"{start + n} positions exceed the model's context of {cfg.block_size}")
    x = w.wte[tokens] + w.wpe[start:start + n]
    ln = np.empty((n, C), np.float32)
    mean, rstd = np.empty(n, np.float32), np.empty(n, np.float32)
    qkv = np.empty((n, 3 * C), np.float32)
    att = np.empty((n, C), np.float32)
    fch, fch_gelu = np.empty((n, cfg.mlp_size), np.float32), np.empty((n, cfg.mlp_size), np.float32)
    gelu_forward = ACTIVATIONS[cfg.activation][0]
    for l, p in enumerate(w.blocks):
        layernorm_forward(ln, mean, rstd, x, p.ln_1_weight, p.ln_1_bias, cfg.ln_eps)
        linear_forward(qkv, ln, p.c_attn_weight, p.c_attn_bias)
        store_kv(cache.k[l], cache.v[l], qkv, start)
        cached_attention(att, qkv, cache.k[l], cache.v[l], start, cfg.attention_scale(l))
        x2 = np.empty((n, C), np.float32)
        linear_residual_forward(x2, att, p.attn_c_proj_weight, p.attn_c_proj_bias, x)
        layernorm_forward(ln, mean, rstd, x2, p.ln_2_weight, p.ln_2_bias, cfg.ln_eps)
        linear_forward(fch, ln, p.c_fc_weight, p.c_fc_bias)
        gelu_forward(fch_gelu.reshape(-1), fch.reshape(-1))
        x = np.empty((n, C), np.float32)
        linear_residual_forward(x, fch_gelu, p.mlp_c_proj_weight, p.mlp_c_proj_bias, x2)
    layernorm_forward(ln, mean, rstd, x, w.ln_f_weight, w.ln_f_bias, cfg.ln_eps)
    cache.length = start + n
    return (ln[-1:] if last else ln) @ w.head.T
