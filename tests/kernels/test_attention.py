"""The tiled attention against the plain T×T formula: values, gradients, options, dropout."""

import math

import numpy as np
import pytest

from cllm.kernels.attention import TK, TQ, attention_backward, attention_forward, online_softmax
from cllm.kernels.dropout import Dropout, attention_site, link

from .gradcheck import assert_grad_close, numerical_grad


def plain_attention(qkv, H, scale, mask=None, keep_scale=1.0):
    """The materialised formula in float64: returns out (B,T,C), probabilities (B,H,T,T), q, k, v."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = (qkv[:, :, i * C:(i + 1) * C].reshape(B, T, H, C // H).transpose(0, 2, 1, 3) for i in range(3))
    scores = np.where(np.tril(np.ones((T, T), bool)), q @ k.transpose(0, 1, 3, 2) * scale, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    dropped = probs if mask is None else probs * mask * keep_scale
    return (dropped @ v).transpose(0, 2, 1, 3).reshape(B, T, C), probs, dropped, q, k, v


def plain_attention_backward(dout, qkv, H, scale, mask=None, keep_scale=1.0):
    B, T, C3 = qkv.shape
    C = C3 // 3
    _, probs, dropped, q, k, v = plain_attention(qkv, H, scale, mask, keep_scale)
    dy = dout.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)
    dv = dropped.transpose(0, 1, 3, 2) @ dy
    dprobs = dy @ v.transpose(0, 1, 3, 2)
    if mask is not None:
        dprobs = dprobs * mask * keep_scale
    dscores = probs * (dprobs - (probs * dprobs).sum(-1, keepdims=True)) * scale
    dq, dk = dscores @ k, dscores.transpose(0, 1, 3, 2) @ q
    return np.concatenate([g.transpose(0, 2, 1, 3).reshape(B, T, C) for g in (dq, dk, dv)], axis=2)


def dropout_mask(drop, B, H, T):
    """The (B,H,T,T) keep mask of ``drop`` = (site key, first row, threshold, scale), in plain Python."""
    key, first_row, threshold, _ = drop
    mask = np.zeros((B, H, T, T))
    for b in range(B):
        for h in range(H):
            head_key = link(link(int(key), first_row + b), h)
            for i in range(T):
                query_key = link(head_key, i)
                for j in range(i + 1):
                    mask[b, h, i, j] = (link(query_key, j + 1) >> 32) >= threshold
    return mask


def run(qkv, H, scale=None, drop=None):
    B, T, C3 = qkv.shape
    scale = 1 / math.sqrt(C3 // 3 // H) if scale is None else scale
    out, lse = np.zeros((B, T, C3 // 3), qkv.dtype), np.zeros((B, H, T), qkv.dtype)
    attention_forward(out, lse, qkv, H, scale, drop)
    return out, lse


@pytest.mark.parametrize("T", [1, 5, TQ + 3, TK + TQ + 1, 2 * TK])
def test_tiled_forward_equals_the_plain_formula(T):
    B, H, hs = 2, 3, 4
    qkv = np.random.default_rng(T).normal(size=(B, T, 3 * H * hs))
    out, lse = run(qkv, H)
    ref, probs, *_ = plain_attention(qkv, H, 1 / math.sqrt(hs))
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T", [TQ + 3, 2 * TK + 5])
def test_tiled_float32_is_within_1e_5_of_the_plain_formula_forward_and_backward(T):
    B, H, hs = 2, 3, 16
    rng = np.random.default_rng(7)
    qkv, dout = rng.normal(size=(B, T, 3 * H * hs)), rng.normal(size=(B, T, H * hs))
    qkv32 = qkv.astype(np.float32)
    out, lse = run(qkv32, H)
    dqkv = np.full_like(qkv32, np.nan)  # every element must be overwritten
    attention_backward(dqkv, dout.astype(np.float32), qkv32, out, lse, H, 1 / math.sqrt(hs))
    ref = plain_attention(qkv32.astype(np.float64), H, 1 / math.sqrt(hs))[0]
    dref = plain_attention_backward(dout.astype(np.float32).astype(np.float64), qkv32.astype(np.float64), H,
                                    1 / math.sqrt(hs))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(dqkv, dref, rtol=0, atol=1e-5)


def test_backward_matches_finite_differences_with_a_score_scale():
    B, T, H, hs = 2, TQ + 7, 2, 3
    rng = np.random.default_rng(3)
    qkv, dout = rng.normal(size=(B, T, 3 * H * hs)), rng.normal(size=(B, T, H * hs))
    options = dict(scale=1 / (3 * math.sqrt(hs)))  # GPT-2's scale_attn_by_inverse_layer_idx at layer 2

    def f():
        return float(np.sum(run(qkv, H, **options)[0] * dout))

    out, lse = run(qkv, H, **options)
    np.testing.assert_allclose(out, plain_attention(qkv, H, 1 / (3 * math.sqrt(hs)))[0], rtol=1e-10, atol=1e-12)
    dqkv = np.zeros_like(qkv)
    attention_backward(dqkv, dout, qkv, out, lse, H, options["scale"])
    idx, numeric = numerical_grad(f, qkv, n_probe=300)
    assert_grad_close(dqkv.reshape(-1)[idx], numeric)


def test_dropout_applies_the_hashed_mask_and_its_gradient_matches_finite_differences():
    B, T, H, hs, p = 2, TQ + 9, 2, 3, 0.3
    rng = np.random.default_rng(5)
    qkv, dout = rng.normal(size=(B, T, 3 * H * hs)), rng.normal(size=(B, T, H * hs))
    scale = 1 / math.sqrt(hs)
    drop = Dropout(p, key=0xDEADBEEF12345678, first_row=4).at(attention_site(1))
    out, lse = run(qkv, H, drop=drop)
    mask = dropout_mask(drop, B, H, T)
    assert 0 < mask.sum() < np.tril(np.ones((T, T))).sum() * B * H
    np.testing.assert_allclose(out, plain_attention(qkv, H, scale, mask, 1 / (1 - p))[0], rtol=1e-10, atol=1e-12)
    dqkv = np.zeros_like(qkv)
    attention_backward(dqkv, dout, qkv, out, lse, H, scale, drop)
    # the backward recomputes the same mask: the exact gradient of the dropped-out forward
    np.testing.assert_allclose(dqkv, plain_attention_backward(dout, qkv, H, scale, mask, 1 / (1 - p)),
                               rtol=1e-9, atol=1e-11)
    idx, numeric = numerical_grad(lambda: float(np.sum(run(qkv, H, drop=drop)[0] * dout)), qkv, n_probe=200)
    assert_grad_close(dqkv.reshape(-1)[idx], numeric)


def test_dropout_does_not_depend_on_how_the_batch_is_split():
    B, T, H = 4, 20, 2
    qkv = np.random.default_rng(6).normal(size=(B, T, 3 * H * 4))
    whole = run(qkv, H, drop=Dropout(0.5, 99, 0).at(attention_site(0)))[0]
    halves = [run(qkv[a:a + 2], H, drop=Dropout(0.5, 99, a).at(attention_site(0)))[0] for a in (0, 2)]
    np.testing.assert_array_equal(whole, np.concatenate(halves))
    assert not np.array_equal(run(qkv, H, drop=Dropout(0.5, 100, 0).at(attention_site(0)))[0], whole)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keeps_the_right_fraction_of_probabilities(p):
    B, T, H = 2, 160, 2
    drop = Dropout(p, key=12345, first_row=0).at(attention_site(3))
    # with v = 1 for every key and no dropout each output is exactly 1; with dropout it is the kept
    # fraction of the probability mass times 1/(1-p): its mean over many rows estimates the keep rate
    qkv = np.zeros((B, T, 3 * H * 4))
    qkv[:, :, 2 * H * 4:] = 1.0
    out = run(qkv, H, drop=drop)[0]
    mask = dropout_mask(drop, B, H, T)
    kept = mask.sum() / (np.tril(np.ones((T, T))).sum() * B * H)
    n = np.tril(np.ones((T, T))).sum() * B * H
    assert abs(kept - (1 - p)) < 4 * math.sqrt(p * (1 - p) / n)
    # uniform probabilities 1/(i+1): out = kept count in the row / (i+1) / (1-p)
    expected = mask.sum(-1) / np.arange(1, T + 1) / (1 - p)
    np.testing.assert_allclose(out[:, :, ::4].transpose(0, 2, 1), expected, rtol=1e-12)


def test_a_strided_output_view_gets_the_same_values():
    B, T, H, hs = 2, TQ + 5, 2, 16
    qkv = np.random.default_rng(8).normal(size=(B, T, 3 * H * hs)).astype(np.float32)
    out, lse = run(qkv, H)
    wide = np.zeros((B, T, 2 * H * hs), np.float32)
    attention_forward(wide[:, :, ::2], np.zeros_like(lse), qkv, H, 1 / math.sqrt(hs))
    np.testing.assert_array_equal(wide[:, :, ::2], out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_online_softmax_over_two_tiles_equals_the_softmax_of_the_whole_row(dtype):
    rng = np.random.default_rng(3)
    nq, nk = 6, 7  # in a tile of 8 x 8, as the tile products pad it
    scores = rng.normal(scale=4.0, size=(nq, 2 * nk))
    scores[2, nk + 1] += 30.0  # the second tile raises this row's maximum: alpha rescales its first tile
    m, l, alpha, new_max = (np.empty(8, dtype) for _ in range(4))
    m[:], l[:] = -np.inf, 0.0
    parts = []
    for j0 in (0, nk):
        tile = np.full((8, 8), 7.0, dtype)
        tile[:nq, :nk] = scores[:, j0:j0 + nk]
        online_softmax(tile, m, l, alpha, new_max, nq, nk, nk)
        assert np.all(tile[nq:] == 7.0) and np.all(tile[:, nk:] == 7.0)  # outside the nq x nk scores: untouched
        parts = [p * alpha[:nq, None] for p in parts] + [tile[:nq, :nk].astype(np.float64)]
    probs = np.exp(scores - scores.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(np.hstack(parts) / l[:nq, None], probs, rtol=tol, atol=tol)
    np.testing.assert_allclose(m[:nq], scores.max(1), rtol=tol)


def test_online_softmax_keeps_causal_masking_and_a_nan_score_makes_its_row_nan():
    tile = np.ones((4, 4), np.float32)
    tile[1, 0] = np.nan
    m, l, alpha, new_max = (np.empty(4, np.float32) for _ in range(4))
    m[:], l[:] = -np.inf, 0.0
    online_softmax(tile, m, l, alpha, new_max, 4, 4, 1)  # query i sees keys 0..i
    assert all(np.all(tile[i, i + 1:] == 0.0) and np.all(tile[i, :i + 1] == 1.0) for i in (0, 2, 3))
    assert np.isnan(l[1]) and not np.isnan(l[[0, 2, 3]]).any()
    np.testing.assert_allclose(l[[0, 2, 3]], [1.0, 3.0, 4.0], rtol=1e-6)
