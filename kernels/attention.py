"""Causal multi-head self-attention without the T×T matrices.

The forward pass walks tiles of TQ queries against tiles of TK keys with an online
softmax (a running max and sum per query; the partial output is rescaled when the max
grows) and keeps only each row's log-sum-exp; the backward pass recomputes the
probabilities tile by tile from it. A worker's memory is linear in T: one head's keys
and values plus a few tiles. Heads are read from and written to the (B,T,3C) qkv layout
in place, so there are no split/merge copies.

Scores are q.k * ``scale`` (GPT-2: 1/sqrt(head size), and 1/(layer+1) more with
``scale_attn_by_inverse_layer_idx``). With ``drop`` = ``Dropout.at(attention_site(layer))``
the probabilities go through dropout, each decision hashed from (site key, global row,
head, query, key) as in ``dropout.py``: the backward pass recomputes the mask, and it does
not depend on how the batch is split across workers.
"""

import numpy as np

from .jit import kernel
from .dropout import chain, keep_factor
from .vecmath import LOG2E, exp2, exp2_normal, maxnum_of_numbers

TQ = 32  # queries per tile
TK = 128  # keys per tile


@kernel
def load_head(out, qkv, b, row0, col, scale):
    # out[:n] (n,hs) = scale * qkv[b, row0:row0+n, col:col+hs], n = min(len(out), T - row0)
    hs = out.shape[1]
    n = min(out.shape[0], qkv.shape[1] - row0)
    for t in range(n):
        src = qkv[b, row0 + t, col:col + hs]
        dst = out[t]
        for d in range(hs):
            dst[d] = src[d] * scale


@kernel
def load_head_transposed(out, qkv, b, col):
    # out[:, :T] (hs,T) = qkv[b, :, col:col+hs].T
    hs, T = out.shape[0], qkv.shape[1]
    for d in range(hs):
        dst = out[d]
        for t in range(T):
            dst[t] = qkv[b, t, col + d]


# The tile products work on blocks of 4 rows that share every load of the other operand
# (about 4x the speed of one row at a time); tiles are padded to multiples of 4 with zeros.

@kernel
def tile_products(out, a, bt, n_i, n_j, j0):
    # out[:n_i, :n_j] = a[:n_i] @ bt[:, j0:j0+n_j]; a (rows,K), bt (K,T); n_i a multiple of 4
    K = a.shape[1]
    for i in range(0, n_i, 4):
        o0, o1, o2, o3 = out[i, :n_j], out[i + 1, :n_j], out[i + 2, :n_j], out[i + 3, :n_j]
        o0[:] = 0.0
        o1[:] = 0.0
        o2[:] = 0.0
        o3[:] = 0.0
        for k in range(K):
            a0, a1, a2, a3 = a[i, k], a[i + 1, k], a[i + 2, k], a[i + 3, k]
            row = bt[k, j0:j0 + n_j]
            for j in range(n_j):
                x = row[j]
                o0[j] += a0 * x
                o1[j] += a1 * x
                o2[j] += a2 * x
                o3[j] += a3 * x


@kernel
def accumulate_rows(out, coef, src, n_out, n_c, j0):
    # out[:n_out] += coef[:n_out, :n_c] @ src[j0:j0+n_c]; out, src (rows,hs); n_out a multiple of 4
    hs = out.shape[1]
    for i in range(0, n_out, 4):
        o0, o1, o2, o3 = out[i], out[i + 1], out[i + 2], out[i + 3]
        for c in range(n_c):
            w0, w1, w2, w3 = coef[i, c], coef[i + 1, c], coef[i + 2, c], coef[i + 3, c]
            row = src[j0 + c]
            for d in range(hs):
                x = row[d]
                o0[d] += w0 * x
                o1[d] += w1 * x
                o2[d] += w2 * x
                o3[d] += w3 * x


@kernel
def online_softmax(s, m, l, alpha, new_max, nq, nk, diagonal):
    # one tile's step of the online softmax, in place. s (R,K) holds the scores of nq queries against
    # nk keys; query i sees the first min(nk, diagonal + i) of them (causal). Those become
    # exp(score - m[i]) after m (R,), each row's running maximum, has taken them in; l (R,) is the
    # running sum of the exponentials and alpha (R,) the factor that rescales the row's partial output.
    # The rest of the tile, up to the padded size of tile_products, becomes 0. new_max (R,) is scratch.
    t = s.dtype.type
    log2e = t(LOG2E)
    nq4, nk4 = (nq + 3) // 4 * 4, (nk + 3) // 4 * 4
    for i in range(nq4):  # s[i, j], not a row view: a view per row costs two reference counts
        n_vis = max(0, min(nk, diagonal + i)) if i < nq else 0
        mx = m[i]
        for j in range(n_vis):
            mx = maxnum_of_numbers(mx, s[i, j])  # nothing branches on it: a NaN score still shows
        total = t(0.0)
        for j in range(n_vis):
            p = exp2_normal((s[i, j] - mx) * log2e)
            s[i, j] = p
            total += p
        for j in range(n_vis, nk4):
            s[i, j] = 0.0
        new_max[i], alpha[i] = mx, total
    for i in range(nq4):  # the rows' running state, vectorised across rows
        total = alpha[i]
        alpha[i] = exp2((m[i] - new_max[i]) * log2e) if new_max[i] > m[i] else t(1.0)
        l[i] = l[i] * alpha[i] + total
        m[i] = new_max[i]


@kernel
def flash_forward(out, lse, qkv, n_head, scale, key, first_row, threshold, keep_scale):
    # qkv (B,T,3C) -> out (B,T,C); lse (B,H,T) the log-sum-exp of each row's scaled scores
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    Tp = (T + 3) // 4 * 4
    t = qkv.dtype.type
    sc, ks = t(scale), t(keep_scale)
    q = np.zeros((TQ, hs), qkv.dtype)  # scaled queries of one tile
    kt = np.zeros((hs, Tp), qkv.dtype)
    v = np.zeros((Tp, hs), qkv.dtype)
    s = np.zeros((TQ, TK), qkv.dtype)
    o = np.zeros((TQ, hs), qkv.dtype)
    m = np.empty(TQ, qkv.dtype)
    l = np.empty(TQ, qkv.dtype)
    alpha = np.empty(TQ, qkv.dtype)
    new_max = np.empty(TQ, qkv.dtype)
    for b in range(B):
        for h in range(n_head):
            qc, kc, vc = h * hs, C + h * hs, 2 * C + h * hs
            load_head_transposed(kt, qkv, b, kc)
            load_head(v, qkv, b, 0, vc, t(1.0))
            head_key = chain(chain(key, first_row + b), h)
            for i0 in range(0, T, TQ):
                nq = min(TQ, T - i0)
                nq4 = (nq + 3) // 4 * 4
                q[:] = 0.0
                load_head(q, qkv, b, i0, qc, sc)
                o[:] = 0.0
                m[:] = -np.inf
                l[:] = 0.0
                for j0 in range(0, i0 + nq, TK):
                    nk = min(TK, i0 + nq - j0)
                    nk4 = (nk + 3) // 4 * 4
                    tile_products(s, q, kt, nq4, nk4, j0)
                    online_softmax(s, m, l, alpha, new_max, nq, nk, i0 + 1 - j0)
                    for i in range(nq4):
                        if threshold > 0 and i < nq:
                            seed = chain(head_key, i0 + i)
                            for j in range(max(0, min(nk, i0 + i + 1 - j0))):
                                s[i, j] *= keep_factor(seed, j0 + j, threshold, ks)
                        for d in range(hs):
                            o[i, d] *= alpha[i]
                    accumulate_rows(o, s, v, nq4, nk, j0)
                for i in range(nq):
                    inv = t(1.0) / l[i]
                    for d in range(hs):
                        out[b, i0 + i, qc + d] = o[i, d] * inv
                    lse[b, h, i0 + i] = m[i] + np.log(l[i])


@kernel
def flash_backward(dqkv, dout, qkv, out, lse, n_head, scale, key, first_row, threshold, keep_scale):
    # dout (B,T,C) -> dqkv (B,T,3C), overwritten; qkv, out, lse as the forward pass left them
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    Tp = (T + 3) // 4 * 4
    t = qkv.dtype.type
    sc, ks = t(scale), t(keep_scale)
    log2e = t(LOG2E)
    q = np.zeros((TQ, hs), qkv.dtype)  # scaled queries of one tile
    do = np.zeros((TQ, hs), qkv.dtype)  # output gradient of one tile
    k = np.zeros((Tp, hs), qkv.dtype)
    kt = np.zeros((hs, Tp), qkv.dtype)
    vt = np.zeros((hs, Tp), qkv.dtype)
    dk = np.zeros((Tp, hs), qkv.dtype)
    dv = np.zeros((Tp, hs), qkv.dtype)
    dq = np.zeros((TQ, hs), qkv.dtype)
    rowdot = np.zeros(TQ, qkv.dtype)
    p = np.zeros((TQ, TK), qkv.dtype)
    ds = np.zeros((TQ, TK), qkv.dtype)
    for b in range(B):
        for h in range(n_head):
            qc, kc, vc = h * hs, C + h * hs, 2 * C + h * hs
            load_head_transposed(kt, qkv, b, kc)
            load_head_transposed(vt, qkv, b, vc)
            load_head(k, qkv, b, 0, kc, t(1.0))
            dk[:] = 0.0
            dv[:] = 0.0
            head_key = chain(chain(key, first_row + b), h)
            for i0 in range(0, T, TQ):
                nq = min(TQ, T - i0)
                nq4 = (nq + 3) // 4 * 4
                for x in (q, do, dq):
                    x[:] = 0.0
                load_head(q, qkv, b, i0, qc, sc)
                load_head(do, dout, b, i0, qc, t(1.0))
                for i in range(nq):
                    acc = t(0.0)
                    for d in range(hs):
                        acc += do[i, d] * out[b, i0 + i, qc + d]
                    rowdot[i] = acc  # sum_j P_ij dP_ij, the softmax backward's subtrahend
                for j0 in range(0, i0 + nq, TK):
                    nk = min(TK, i0 + nq - j0)
                    nk4 = (nk + 3) // 4 * 4
                    tile_products(p, q, kt, nq4, nk4, j0)
                    tile_products(ds, do, vt, nq4, nk4, j0)
                    for i in range(nq4):
                        pi, dsi = p[i], ds[i]
                        n_vis = max(0, min(nk, i0 + i + 1 - j0)) if i < nq else 0
                        row_lse = lse[b, h, i0 + i] if i < nq else t(0.0)
                        for j in range(n_vis):
                            pi[j] = exp2_normal((pi[j] - row_lse) * log2e)  # the probability, recomputed
                        if threshold > 0:
                            seed = chain(head_key, i0 + i)
                            for j in range(n_vis):
                                factor = keep_factor(seed, j0 + j, threshold, ks)
                                dsi[j] = pi[j] * (dsi[j] * factor - rowdot[i])  # the score's gradient
                                pi[j] *= factor  # what the forward pass multiplied v by
                        else:
                            for j in range(n_vis):
                                dsi[j] = pi[j] * (dsi[j] - rowdot[i])
                        pi[n_vis:nk4] = 0.0
                        dsi[n_vis:nk4] = 0.0
                    accumulate_rows(dv[j0:], p.T, do, nk4, nq, 0)  # dv[j] += sum_i p[i,j] do[i]
                    accumulate_rows(dk[j0:], ds.T, q, nk4, nq, 0)
                    accumulate_rows(dq, ds, k, nq4, nk, j0)
                for i in range(nq):
                    for d in range(hs):
                        dqkv[b, i0 + i, qc + d] = dq[i, d] * sc
            for i in range(T):
                for d in range(hs):
                    dqkv[b, i, kc + d] = dk[i, d]
                    dqkv[b, i, vc + d] = dv[i, d]


NO_DROPOUT = (np.uint64(0), 0, 0, 1.0)


def attention_forward(out, lse, qkv, n_head, scale, drop=None):
    """qkv (B,T,3C) -> out (B,T,C), which may be a strided view; lse (B,H,T) is kept for the
    backward pass. ``drop``: (key, first_row, threshold, scale) from ``Dropout.at``, or None."""
    flash_forward(out, lse, qkv, n_head, scale, *(drop or NO_DROPOUT))


def attention_backward(dqkv, dout, qkv, out, lse, n_head, scale, drop=None):
    """Overwrite dqkv (B,T,3C) from dout (B,T,C), given the forward pass's arguments and results."""
    flash_backward(dqkv, dout, qkv, out, lse, n_head, scale, *(drop or NO_DROPOUT))
