"""Causal multi-head self-attention.

Scores and the weighted sum are batched matrix products through BLAS; the head
split/merge and the causal softmax (scale, mask, exponentiate, normalise in one
pass) are numba kernels.
"""

import numpy as np

from .jit import kernel


@kernel
def split_heads(out, inp):
    # inp (B,T,C) (may be a strided slice of qkv) -> out (B,H,T,hs)
    B, H, T, hs = out.shape
    for b in range(B):
        for t in range(T):
            for h in range(H):
                for d in range(hs):
                    out[b, h, t, d] = inp[b, t, h * hs + d]


@kernel
def merge_heads(out, inp):
    # inp (B,H,T,hs) -> out (B,T,C) (may be a strided slice)
    B, H, T, hs = inp.shape
    for b in range(B):
        for t in range(T):
            for h in range(H):
                for d in range(hs):
                    out[b, t, h * hs + d] = inp[b, h, t, d]


@kernel
def causal_softmax_forward(att, scale):
    # att (B,H,T,T): raw scores q.k in, attention probabilities out (in place)
    B, H, T, _ = att.shape
    for b in range(B):
        for h in range(H):
            for t in range(T):
                row = att[b, h, t]
                mx = -np.inf
                for j in range(t + 1):
                    v = row[j] * scale
                    if v > mx:
                        mx = v
                total = 0.0
                for j in range(t + 1):
                    e = np.exp(row[j] * scale - mx)
                    row[j] = e
                    total += e
                inv = 1.0 / total
                for j in range(t + 1):
                    row[j] *= inv
                for j in range(t + 1, T):
                    row[j] = 0.0


@kernel
def causal_softmax_backward(datt, att, scale):
    # datt (B,H,T,T): dL/dprobabilities in, dL/draw-scores out (in place); att the probabilities
    B, H, T, _ = att.shape
    for b in range(B):
        for h in range(H):
            for t in range(T):
                p = att[b, h, t]
                d = datt[b, h, t]
                dot = 0.0
                for j in range(t + 1):
                    dot += p[j] * d[j]
                for j in range(t + 1):
                    d[j] = scale * p[j] * (d[j] - dot)
                for j in range(t + 1, T):
                    d[j] = 0.0


def attention_forward(out, q, k, v, att, y, qkv, scale):
    """qkv (B,T,3C) -> out (B,T,C); scores are q.k * ``scale`` (GPT-2: 1/sqrt(hs)).

    Keeps q, k, v, y (B,H,T,hs) and the probabilities att (B,H,T,T) for the backward pass.
    """
    C = out.shape[2]
    split_heads(q, qkv[:, :, :C])
    split_heads(k, qkv[:, :, C:2 * C])
    split_heads(v, qkv[:, :, 2 * C:])
    np.matmul(q, k.transpose(0, 1, 3, 2), out=att)
    causal_softmax_forward(att, scale)
    np.matmul(att, v, out=y)
    merge_heads(out, y)


def attention_backward(dqkv, dout, q, k, v, att, dq, dk, dv, dy, datt, scale):
    """Overwrite dqkv (B,T,3C) from dout (B,T,C); dq, dk, dv, dy, datt are scratch."""
    C = dout.shape[2]
    split_heads(dy, dout)
    np.matmul(dy, v.transpose(0, 1, 3, 2), out=datt)
    np.matmul(att.transpose(0, 1, 3, 2), dy, out=dv)
    causal_softmax_backward(datt, att, scale)
    np.matmul(datt, k, out=dq)
    np.matmul(datt.transpose(0, 1, 3, 2), q, out=dk)
    merge_heads(dqkv[:, :, :C], dq)
    merge_heads(dqkv[:, :, C:2 * C], dk)
    merge_heads(dqkv[:, :, 2 * C:], dv)
