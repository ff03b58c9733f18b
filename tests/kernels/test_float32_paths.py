"""The float32 fast paths (the polynomials e**x and 2**x, GELU through 2**x, the vectorised row max,
LayerNorm's one-pass statistics) against the float64 formulas they stand for, at the edges as well as inside."""

import math

import numba
import numpy as np
import pytest

from cllm.kernels.crossentropy import BLOCK, crossentropy_forward, crossentropy_forward_backward, row_max
from cllm.kernels.gelu import gelu_backward, gelu_forward
from cllm.kernels.layernorm import layernorm_forward
from cllm.kernels.vecmath import exp, exp2, exp2_nonpositive, exp2_normal, unreassociated


def applied(fn):
    """A compiled loop out[i] = fn(x[i]), fn as kernels compile it."""
    @numba.njit
    def apply(out, x):
        for i in range(x.shape[0]):
            out[i] = fn(x[i])
    return apply


exp2_all, exp2_normal_all, exp_all = applied(exp2), applied(exp2_normal), applied(exp)
exp2_nonpositive_all, unreassociated_all = applied(exp2_nonpositive), applied(unreassociated)


def test_exp2_is_within_3e_7_relative_and_keeps_nan_and_the_infinities():
    t = np.linspace(-126.0, 127.0, 1_000_001).astype(np.float32)
    out = np.empty_like(t)
    exp2_all(out, t)
    exact = np.exp2(t.astype(np.float64))
    assert np.max(np.abs(out / exact - 1)) < 3e-7
    edges = np.array([np.nan, -np.inf, np.inf, -200.0, 200.0, 128.0, 0.0], np.float32)
    out = np.empty_like(edges)
    exp2_all(out, edges)
    assert np.isnan(out[0])
    assert list(out[1:]) == [0.0, np.inf, 0.0, np.inf, np.inf, 1.0]


def test_exp2_normal_is_exp2_inside_its_range_and_clamps_to_normal_floats_outside():
    t = np.linspace(-126.0, 127.0, 1_000_001).astype(np.float32)
    out, reference = np.empty_like(t), np.empty_like(t)
    exp2_normal_all(out, t)
    exp2_all(reference, t)
    np.testing.assert_array_equal(out, reference)
    edges = np.array([np.nan, -np.inf, np.inf, -200.0, 200.0], np.float32)
    out = np.empty_like(edges)
    exp2_normal_all(out, edges)
    assert np.isnan(out[0])
    assert list(out[1:]) == [2.0 ** -126, 2.0 ** 127, 2.0 ** -126, 2.0 ** 127]


def test_exp2_nonpositive_is_exp2_from_minus_126_to_a_rounding_above_0_and_clamps_below():
    t = np.concatenate([np.linspace(-126.0, 0.0, 1_000_001), [1e-6, 3e-7]]).astype(np.float32)
    out, reference = np.empty_like(t), np.empty_like(t)
    exp2_nonpositive_all(out, t)
    exp2_all(reference, t)
    np.testing.assert_array_equal(out, reference)
    edges = np.array([np.nan, -np.inf, -200.0, -126.5], np.float32)
    out = np.empty_like(edges)
    exp2_nonpositive_all(out, edges)
    assert np.isnan(out[0])
    assert list(out[1:]) == [2.0 ** -126] * 3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unreassociated_is_its_argument(dtype):
    x = np.array([1.5, -0.0, np.inf, np.nan, 3e-39], dtype)
    out = np.empty_like(x)
    unreassociated_all(out, x)
    np.testing.assert_array_equal(out, x)


def test_exp_is_within_4e_7_relative_keeps_nan_and_overflows_to_inf():
    x = np.linspace(-87.0, 88.0, 1_000_001).astype(np.float32)
    out = np.empty_like(x)
    exp_all(out, x)
    assert np.max(np.abs(out / np.exp(x.astype(np.float64)) - 1)) < 4e-7
    edges = np.array([np.nan, np.inf, 200.0, 0.0, -np.inf], np.float32)
    out = np.empty_like(edges)
    exp_all(out, edges)
    assert np.isnan(out[0])
    assert list(out[1:4]) == [np.inf, np.inf, 1.0] and 0.0 <= out[4] < 2e-38


def test_float32_gelu_new_is_within_float32_rounding_of_the_float64_formula_forward_and_backward():
    x = np.linspace(-12.0, 12.0, 2_000_001).astype(np.float32)
    out, local = np.empty_like(x), np.ones_like(x)
    gelu_forward(out, x)
    gelu_backward(local, x)
    xd = x.astype(np.float64)
    s = 1 / (1 + np.exp(-2 * math.sqrt(2 / math.pi) * (xd + 0.044715 * xd ** 3)))  # 0.5 * (1 + tanh(u))
    exact = xd * s
    assert np.max(np.abs(out - exact) / (1 + np.abs(xd))) < 2e-7
    tail = np.abs(exact) > 1e-30  # relative precision holds far into the negative tail
    assert np.max(np.abs(out - exact)[tail] / np.abs(exact[tail])) < 1e-5
    derivative = s + xd * s * (1 - s) * 2 * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * xd ** 2)
    assert np.max(np.abs(local - derivative)) < 5e-7
    special = np.array([np.nan, np.inf, 0.0, -200.0], np.float32)
    out, local = np.empty_like(special), np.ones_like(special)
    gelu_forward(out, special)
    gelu_backward(local, special)
    assert np.isnan(out[0]) and out[1] == np.inf and out[2] == 0.0 and out[3] == 0.0
    assert np.isnan(local[0]) and local[2] == 0.5 and abs(local[3]) < 1e-13


def test_row_max_passes_over_nan_but_the_loss_is_nan():
    row = np.array([0.5, np.nan, 3.0, -1.0] * 9, np.float32)
    assert row_max(row) == 3.0
    logits = np.stack([np.arange(36, dtype=np.float32), row])
    targets = np.array([2, 0], np.int32)
    assert not np.isfinite(crossentropy_forward(logits, targets)[0])
    assert not np.isfinite(crossentropy_forward_backward(logits.copy(), targets, 1.0))


@pytest.mark.parametrize("scale, offset", [(1.0, 0.0), (5.0, 30.0), (20.0, -100.0), (1.0, 1e6), (3.0, -3e7)])
def test_float32_cross_entropy_matches_the_float64_softmax(scale, offset):
    rng = np.random.default_rng(5)
    N, V = 16, 1000
    logits = (rng.normal(size=(N, V)) * scale + offset).astype(np.float32)
    targets = rng.integers(0, V, N).astype(np.int32)
    x = logits.astype(np.float64)
    shifted = x - x.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    loss = -log_probs[np.arange(N), targets].sum()
    grad = np.exp(log_probs)
    grad[np.arange(N), targets] -= 1
    got = logits.copy()
    assert crossentropy_forward_backward(got, targets, 0.5) == pytest.approx(loss, rel=1e-7)
    assert crossentropy_forward(logits, targets)[0] == pytest.approx(loss, rel=1e-7)
    np.testing.assert_allclose(got, 0.5 * grad, rtol=1e-5, atol=1e-8)


def float64_softmax_loss_and_gradient(logits, targets, dloss):
    x = logits.astype(np.float64)
    rows = np.arange(len(x))
    shifted = x - x.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    grad = np.exp(log_probs)
    grad[rows, targets] -= 1
    return -log_probs[rows, targets].sum(), dloss * grad


def test_float32_cross_entropy_redoes_the_blocks_where_the_target_logit_is_far_below_the_maximum():
    rng = np.random.default_rng(7)
    V = 2 * BLOCK + 37
    logits = rng.normal(size=(4, V)).astype(np.float32)
    targets = np.array([5, 17, 2 * BLOCK + 3, 9], np.int32)
    logits[0, 5] = -500.0  # every block overflows relative to the target and is redone from its own maximum
    logits[1, 2 * BLOCK + 30] = 70.0  # only the last block overflows; the two before are rescaled to it
    logits[2, [0, BLOCK + 1]] = [1e30, -1e30]  # the largest float32 logits the head could give
    loss, grad = float64_softmax_loss_and_gradient(logits, targets, 0.5)
    got = logits.copy()
    assert crossentropy_forward_backward(got, targets, 0.5) == pytest.approx(loss, rel=1e-7)
    assert crossentropy_forward(logits, targets)[0] == pytest.approx(loss, rel=1e-7)
    np.testing.assert_allclose(got, grad, rtol=1e-5, atol=1e-8)
    tiny = grad[1, :2 * BLOCK] != grad[1, 17]  # probabilities near e**-70, kept to float32 precision
    np.testing.assert_allclose(got[1, :2 * BLOCK][tiny[:2 * BLOCK]], grad[1, :2 * BLOCK][tiny[:2 * BLOCK]], rtol=1e-5)
    assert np.all(np.abs(got[1, :2 * BLOCK][tiny[:2 * BLOCK]]) > 1e-33)


@pytest.mark.parametrize("where", [5, BLOCK + 9])
def test_float32_cross_entropy_is_nan_for_a_nan_logit_in_any_block_and_infinite_for_a_target_at_minus_infinity(where):
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(3, 2 * BLOCK)).astype(np.float32)
    targets = np.array([1, where, 2], np.int32)
    logits[0, where] = np.nan  # a NaN that is not the target
    logits[1, where] = np.nan  # the target's own logit
    logits[2, 2] = -np.inf
    losses = [crossentropy_forward_backward(logits[i:i + 1].copy(), targets[i:i + 1], 1.0) for i in range(3)]
    assert np.isnan(losses[0]) and np.isnan(losses[1])
    assert losses[2] == np.inf
    assert crossentropy_forward(logits[2:], targets[2:])[0] == np.inf
    inf_row = logits[:1].copy()
    inf_row[0, where] = np.inf
    assert not np.isfinite(crossentropy_forward_backward(inf_row, targets[:1], 1.0))


def test_float32_layernorm_forward_keeps_float32_precision_on_offset_rows_and_outliers_in_the_first_column():
    rng = np.random.default_rng(9)
    N, C = 7, 768
    x = rng.normal(size=(N, C))
    x[1] += 1000.0  # a large mean
    x[2, 0] = 300.0  # an outlier where the statistics are shifted to, and others elsewhere
    x[3, 5], x[3, 0] = 500.0, -400.0
    x[4] *= 1e-3
    x[5] = 2.0  # a constant row: variance 0
    x32 = x.astype(np.float32)
    weight, bias = rng.normal(size=C).astype(np.float32), rng.normal(size=C).astype(np.float32)
    out, mean, rstd = np.empty_like(x32), np.empty(N, np.float32), np.empty(N, np.float32)
    layernorm_forward(out, mean, rstd, x32, weight, bias, 1e-5)
    exact = x32.astype(np.float64)
    exact_mean, exact_var = exact.mean(1), exact.var(1)
    exact_rstd = 1.0 / np.sqrt(exact_var + 1e-5)
    np.testing.assert_allclose(mean, exact_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rstd, exact_rstd, rtol=2e-5)
    expected = (exact - exact_mean[:, None]) * exact_rstd[:, None] * weight + bias
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-4 * np.abs(expected).max())
