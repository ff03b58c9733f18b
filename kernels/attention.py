"""Causal multi-head self-attention without the T×T matrices.

The forward pass walks tiles of TQ queries against tiles of TK keys with an online
softmax (a running max and sum per query; the partial output is rescaled when the max
grows) and keeps only each row's log-sum-exp; the backward pass recomputes the
probabilities tile by tile from it. A worker's memory is linear in T: one head's keys
and values plus a few tiles. Heads are read from and written to the (B,T,3C) qkv layout
in place, so there are no split/merge copies; while one head is computed, the rows the
next head reads are prefetched, so its strided reads do not wait on memory.

The five kinds of tile product (q.k, dout.v, p@v, dscores@k and their transposes) run in
register blocks of 8 rows x 2 vectors (``simd.py``): about 70 GFLOP/s on one AVX-512 core
where a loop with its accumulators in memory reaches about 30.

Scores are q.k * ``scale`` (GPT-2: 1/sqrt(head size), and 1/(layer+1) more with
``scale_attn_by_inverse_layer_idx``). With ``drop`` = ``Dropout.at(attention_site(layer))``
the probabilities go through dropout, each decision hashed from (site key, global row,
head, query, key) as in ``dropout.py``: the backward pass recomputes the mask, and it does
not depend on how the batch is split across workers.
"""

import numpy as np
from numba.extending import register_jitable

from .jit import kernel
from .dropout import chain, keep_factor
from .simd import copy_scaled, fma, lanes, load, prefetch, splat, store
from .vecmath import LOG2E, exp2, exp2_nonpositive, exp2_normal, maxnum_of_numbers, unreassociated

TQ = 32  # queries per tile, a multiple of 8
TK = 128  # keys per tile, a multiple of PAD
PAD = 32  # widths of tiles and head buffers are padded with zeros to a multiple of this


@kernel
def padded(n, to):
    return (n + to - 1) // to * to


@kernel
def load_head(out, qkv, b, row0, n, col, hs, scale):
    # out[:n, :hs] = scale * qkv[b, row0:row0+n, col:col+hs]
    for t in range(n):
        copy_scaled(out[t], 0, qkv[b, row0 + t], col, hs, scale)


@kernel
def load_head_transposed(out, rows, qkv, b, col, hs):
    # rows[:T, :hs] = qkv[b, :, col:col+hs] and out[:hs, :T] = its transpose (one pass over qkv, which is
    # the slow side, and a transpose between buffers in the cache)
    T = qkv.shape[1]
    load_head(rows, qkv, b, 0, T, col, hs, out.dtype.type(1.0))
    for t in range(T):
        src = rows[t]
        for d in range(hs):
            out[d, t] = src[d]


@kernel
def prefetch_rows(x, b, row0, n, cols, width):
    # ask for x[b, row0:row0+n, col:col+width] for each col in cols, one request per 64-byte line
    step = 64 // x.itemsize
    for t in range(row0, row0 + n):
        row = x[b, t]
        for col in cols:
            for c in range(col, col + width, step):
                prefetch(row, c)
            prefetch(row, col + width - 1)


@kernel
def next_head(b, h, n_head):
    # the (row, head) after (b, h)
    return (b, h + 1) if h + 1 < n_head else (b + 1, 0)


# The tile products keep a block of 8 rows x 2 vectors of results in 16 registers: each
# load of a vector of the other operand feeds 8 multiply-adds (see simd.py).

@kernel
def tile_products(out, a, bt, n_i, n_j, j0):
    # out[:n_i, :n_j] = a[:n_i] @ bt[:, j0:j0+n_j]; a (rows,K), bt (K,cols); n_i a multiple of 8, n_j of PAD
    K, w = bt.shape[0], lanes(out)
    zero = splat(out.dtype.type(0.0))
    for i in range(0, n_i, 8):
        a0, a1, a2, a3, a4, a5, a6, a7 = a[i], a[i + 1], a[i + 2], a[i + 3], a[i + 4], a[i + 5], a[i + 6], a[i + 7]
        for j in range(j0, j0 + n_j, 2 * w):
            c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = zero
            c40 = c41 = c50 = c51 = c60 = c61 = c70 = c71 = zero
            for k in range(K):
                x0, x1 = load(bt[k], j), load(bt[k], j + w)
                c00, c01 = fma(a0[k], x0, c00), fma(a0[k], x1, c01)
                c10, c11 = fma(a1[k], x0, c10), fma(a1[k], x1, c11)
                c20, c21 = fma(a2[k], x0, c20), fma(a2[k], x1, c21)
                c30, c31 = fma(a3[k], x0, c30), fma(a3[k], x1, c31)
                c40, c41 = fma(a4[k], x0, c40), fma(a4[k], x1, c41)
                c50, c51 = fma(a5[k], x0, c50), fma(a5[k], x1, c51)
                c60, c61 = fma(a6[k], x0, c60), fma(a6[k], x1, c61)
                c70, c71 = fma(a7[k], x0, c70), fma(a7[k], x1, c71)
            c = j - j0
            store(out[i], c, c00), store(out[i], c + w, c01)
            store(out[i + 1], c, c10), store(out[i + 1], c + w, c11)
            store(out[i + 2], c, c20), store(out[i + 2], c + w, c21)
            store(out[i + 3], c, c30), store(out[i + 3], c + w, c31)
            store(out[i + 4], c, c40), store(out[i + 4], c + w, c41)
            store(out[i + 5], c, c50), store(out[i + 5], c + w, c51)
            store(out[i + 6], c, c60), store(out[i + 6], c + w, c61)
            store(out[i + 7], c, c70), store(out[i + 7], c + w, c71)


@kernel
def accumulate_rows(out, coef, src, n_out, n_c, j0, lo, hi):
    # out[:n_out] += coef[:n_out, :n_c] @ src[j0:j0+n_c]; out, src (rows,width), width a multiple of PAD,
    # n_out a multiple of 8. coef[r, c] is zero outside the band lo <= c - r <= hi, which is skipped.
    w = lanes(out)
    for i in range(0, n_out, 8):
        o0, o1, o2, o3, o4, o5, o6, o7 = out[i], out[i + 1], out[i + 2], out[i + 3], out[i + 4], out[i + 5], \
            out[i + 6], out[i + 7]
        c_from, c_to = max(0, i + lo), min(n_c, i + 8 + hi)
        for d in range(0, out.shape[1], 2 * w):
            c00, c01, c10, c11 = load(o0, d), load(o0, d + w), load(o1, d), load(o1, d + w)
            c20, c21, c30, c31 = load(o2, d), load(o2, d + w), load(o3, d), load(o3, d + w)
            c40, c41, c50, c51 = load(o4, d), load(o4, d + w), load(o5, d), load(o5, d + w)
            c60, c61, c70, c71 = load(o6, d), load(o6, d + w), load(o7, d), load(o7, d + w)
            for c in range(c_from, c_to):
                x0, x1 = load(src[j0 + c], d), load(src[j0 + c], d + w)
                c00, c01 = fma(coef[i, c], x0, c00), fma(coef[i, c], x1, c01)
                c10, c11 = fma(coef[i + 1, c], x0, c10), fma(coef[i + 1, c], x1, c11)
                c20, c21 = fma(coef[i + 2, c], x0, c20), fma(coef[i + 2, c], x1, c21)
                c30, c31 = fma(coef[i + 3, c], x0, c30), fma(coef[i + 3, c], x1, c31)
                c40, c41 = fma(coef[i + 4, c], x0, c40), fma(coef[i + 4, c], x1, c41)
                c50, c51 = fma(coef[i + 5, c], x0, c50), fma(coef[i + 5, c], x1, c51)
                c60, c61 = fma(coef[i + 6, c], x0, c60), fma(coef[i + 6, c], x1, c61)
                c70, c71 = fma(coef[i + 7, c], x0, c70), fma(coef[i + 7, c], x1, c71)
            store(o0, d, c00), store(o0, d + w, c01), store(o1, d, c10), store(o1, d + w, c11)
            store(o2, d, c20), store(o2, d + w, c21), store(o3, d, c30), store(o3, d + w, c31)
            store(o4, d, c40), store(o4, d + w, c41), store(o5, d, c50), store(o5, d + w, c51)
            store(o6, d, c60), store(o6, d + w, c61), store(o7, d, c70), store(o7, d + w, c71)


@kernel
def online_softmax(s, m, l, alpha, new_max, nq, nk, diagonal):
    # one tile's step of the online softmax, in place. s (R,K) holds the scores of nq queries against
    # nk keys; query i sees the first min(nk, diagonal + i) of them (causal). Those become
    # exp(score - m[i]) after m (R,), each row's running maximum, has taken them in, and the rest of
    # the row's nk become 0; l (R,) is the running sum of the exponentials and alpha (R,) the factor
    # that rescales the row's partial output. new_max (R,) is scratch.
    t = s.dtype.type
    log2e = t(LOG2E)
    for i in range(nq):
        n_vis = max(0, min(nk, diagonal + i))
        if n_vis == TK:  # a whole row of keys: loops of constant length, which LLVM unrolls completely
            new_max[i], alpha[i] = exponentiate_row(s, i, TK, m[i], log2e)
        else:
            new_max[i], alpha[i] = exponentiate_row(s, i, n_vis, m[i], log2e)
            for j in range(n_vis, nk):
                s[i, j] = 0.0
    for i in range(nq):  # the rows' running state, vectorised across rows
        total = alpha[i]
        alpha[i] = exp2((m[i] - new_max[i]) * log2e) if new_max[i] > m[i] else t(1.0)
        l[i] = l[i] * alpha[i] + total
        m[i] = new_max[i]


@register_jitable
def exponentiate_row(s, i, n, mx, log2e):
    # s[i, :n] -> exp(s - mx') with mx' the larger of mx and their maximum; returns mx' and their sum.
    # s[i, j], not a row view: a view per row costs two atomic reference counts
    for j in range(n):
        mx = maxnum_of_numbers(mx, s[i, j])  # nothing branches on it: a NaN score still shows
    offset = unreassociated(mx * log2e)  # one multiply-add per score, not a subtraction and a multiply
    total = s.dtype.type(0.0)
    for j in range(n):
        p = exp2_nonpositive(s[i, j] * log2e - offset)
        s[i, j] = p
        total += p
    return mx, total


@kernel
def flash_forward(out, lse, qkv, n_head, scale, key, first_row, threshold, keep_scale):
    # qkv (B,T,3C) -> out (B,T,C); lse (B,H,T) the log-sum-exp of each row's scaled scores
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    hp, Tp = padded(hs, PAD), padded(T, PAD)
    t = qkv.dtype.type
    sc, ks = t(scale), t(keep_scale)
    q = np.zeros((TQ, hp), qkv.dtype)  # scaled queries of one tile
    k = np.zeros((Tp, hp), qkv.dtype)  # keys, and kt their transpose
    kt = np.zeros((hs, Tp), qkv.dtype)
    v = np.zeros((Tp, hp), qkv.dtype)
    s = np.zeros((TQ, TK), qkv.dtype)
    o = np.zeros((TQ, hp), qkv.dtype)
    m = np.empty(TQ, qkv.dtype)
    l = np.empty(TQ, qkv.dtype)
    alpha = np.empty(TQ, qkv.dtype)
    new_max = np.empty(TQ, qkv.dtype)
    for b in range(B):
        for h in range(n_head):
            qc, kc, vc = h * hs, C + h * hs, 2 * C + h * hs
            load_head_transposed(kt, k, qkv, b, kc, hs)
            load_head(v, qkv, b, 0, T, vc, hs, t(1.0))
            head_key = chain(chain(key, first_row + b), h)
            nb, nh = next_head(b, h, n_head)
            for i0 in range(0, T, TQ):
                nq = min(TQ, T - i0)
                nq8 = padded(nq, 8)
                q[nq:] = 0.0
                load_head(q, qkv, b, i0, nq, qc, hs, sc)
                o[:] = 0.0
                if nb < B:  # while this head works on these rows, the next head's arrive
                    prefetch_rows(qkv, nb, i0, nq, (nh * hs, C + nh * hs, 2 * C + nh * hs), hs)
                    prefetch_rows(out, nb, i0, nq, (nh * hs,), hs)
                m[:] = -np.inf
                l[:] = 0.0
                for j0 in range(0, i0 + nq, TK):
                    nk = min(TK, i0 + nq - j0)
                    tile_products(s, q, kt, nq8, padded(nk, PAD), j0)
                    online_softmax(s, m, l, alpha, new_max, nq, nk, i0 + 1 - j0)
                    for i in range(nq):  # padding rows of s stay 0: their queries are 0
                        if threshold > 0:
                            seed = chain(head_key, i0 + i)
                            for j in range(max(0, min(nk, i0 + i + 1 - j0))):
                                s[i, j] *= keep_factor(seed, j0 + j, threshold, ks)
                        for d in range(hs):
                            o[i, d] *= alpha[i]
                    accumulate_rows(o, s, v, nq8, nk, j0, -TK, i0 - j0)
                for i in range(nq):
                    copy_scaled(out[b, i0 + i], qc, o[i], 0, hs, t(1.0) / l[i])
                    lse[b, h, i0 + i] = m[i] + np.log(l[i])


@kernel
def flash_backward(dqkv, dout, qkv, out, lse, n_head, scale, key, first_row, threshold, keep_scale):
    # dout (B,T,C) -> dqkv (B,T,3C), overwritten; qkv, out, lse as the forward pass left them
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    hp, Tp = padded(hs, PAD), padded(T, PAD)
    t = qkv.dtype.type
    sc, ks = t(scale), t(keep_scale)
    w = lanes(qkv)
    log2e = t(LOG2E)
    q = np.zeros((TQ, hp), qkv.dtype)  # scaled queries of one tile
    do = np.zeros((TQ, hp), qkv.dtype)  # output gradient of one tile
    k = np.zeros((Tp, hp), qkv.dtype)  # keys and values, and their transposes
    v = np.zeros((Tp, hp), qkv.dtype)
    kt = np.zeros((hs, Tp), qkv.dtype)
    vt = np.zeros((hs, Tp), qkv.dtype)
    dk = np.zeros((Tp, hp), qkv.dtype)
    dv = np.zeros((Tp, hp), qkv.dtype)
    dq = np.zeros((TQ, hp), qkv.dtype)
    rowdot = np.zeros(TQ, qkv.dtype)
    p = np.zeros((TQ, TK), qkv.dtype)
    ds = np.zeros((TQ, TK), qkv.dtype)
    for b in range(B):
        for h in range(n_head):
            qc, kc, vc = h * hs, C + h * hs, 2 * C + h * hs
            load_head_transposed(kt, k, qkv, b, kc, hs)
            load_head_transposed(vt, v, qkv, b, vc, hs)
            dk[:] = 0.0
            dv[:] = 0.0
            head_key = chain(chain(key, first_row + b), h)
            nb, nh = next_head(b, h, n_head)
            for i0 in range(0, T, TQ):
                nq = min(TQ, T - i0)
                nq8 = padded(nq, 8)
                q[nq:] = 0.0
                do[nq:] = 0.0
                dq[:] = 0.0
                load_head(q, qkv, b, i0, nq, qc, hs, sc)
                load_head(do, dout, b, i0, nq, qc, hs, t(1.0))
                if nb < B:  # while this head works on these rows, the next head's arrive
                    prefetch_rows(qkv, nb, i0, nq, (nh * hs, C + nh * hs, 2 * C + nh * hs), hs)
                    prefetch_rows(dout, nb, i0, nq, (nh * hs,), hs)
                    prefetch_rows(out, nb, i0, nq, (nh * hs,), hs)
                    prefetch_rows(dqkv, nb, i0, nq, (nh * hs, C + nh * hs, 2 * C + nh * hs), hs)
                for i in range(nq):
                    acc = t(0.0)
                    for d in range(hs):
                        acc += do[i, d] * out[b, i0 + i, qc + d]
                    rowdot[i] = acc  # sum_j P_ij dP_ij, the softmax backward's subtrahend
                for j0 in range(0, i0 + nq, TK):
                    nk = min(TK, i0 + nq - j0)
                    nk8 = padded(nk, 8)
                    tile_products(p, q, kt, nq8, padded(nk, PAD), j0)
                    tile_products(ds, do, vt, nq8, padded(nk, PAD), j0)
                    for i in range(nq8):
                        pi, dsi = p[i], ds[i]
                        n_vis = max(0, min(nk, i0 + i + 1 - j0)) if i < nq else 0
                        row_lse = lse[b, h, i0 + i] if i < nq else t(0.0)
                        n_whole = padded(n_vis, w)  # whole vectors (masked scores -inf): no scalar remainder
                        pi[n_vis:n_whole] = -np.inf
                        offset = unreassociated(row_lse * log2e)
                        for j in range(n_whole):
                            pi[j] = exp2_nonpositive(pi[j] * log2e - offset)  # the probability, recomputed
                        if threshold > 0:
                            seed = chain(head_key, i0 + i)
                            for j in range(n_vis):
                                factor = keep_factor(seed, j0 + j, threshold, ks)
                                dsi[j] = pi[j] * (dsi[j] * factor - rowdot[i])  # the score's gradient
                                pi[j] *= factor  # what the forward pass multiplied v by
                        else:
                            for j in range(n_whole):
                                dsi[j] = pi[j] * (dsi[j] - rowdot[i])
                        pi[n_vis:nk8] = 0.0
                        dsi[n_vis:nk8] = 0.0
                    # keys j0+r see queries i0+c with c - r >= j0 - i0; queries see keys with c - r <= i0 - j0
                    accumulate_rows(dv[j0:], p.T, do, nk8, nq, 0, j0 - i0, TQ)  # dv[j] += sum_i p[i,j] do[i]
                    accumulate_rows(dk[j0:], ds.T, q, nk8, nq, 0, j0 - i0, TQ)
                    accumulate_rows(dq, ds, k, nq8, nk, j0, -TK, i0 - j0)
                for i in range(nq):
                    copy_scaled(dqkv[b, i0 + i], qc, dq[i], 0, hs, sc)
            for i in range(T):
                copy_scaled(dqkv[b, i], kc, dk[i], 0, hs, t(1.0))
                copy_scaled(dqkv[b, i], vc, dv[i], 0, hs, t(1.0))


NO_DROPOUT = (np.uint64(0), 0, 0, 1.0)


def attention_forward(out, lse, qkv, n_head, scale, drop=None):
    """qkv (B,T,3C) -> out (B,T,C), which may be a strided view; lse (B,H,T) is kept for the
    backward pass. ``drop``: (key, first_row, threshold, scale) from ``Dropout.at``, or None."""
    flash_forward(out, lse, qkv, n_head, scale, *(drop or NO_DROPOUT))


def attention_backward(dqkv, dout, qkv, out, lse, n_head, scale, drop=None):
    """Overwrite dqkv (B,T,3C) from dout (B,T,C), given the forward pass's arguments and results."""
    flash_backward(dqkv, dout, qkv, out, lse, n_head, scale, *(drop or NO_DROPOUT))
