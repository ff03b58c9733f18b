"""Every kernel's backward against float64 finite differences of its forward."""

import math

import numpy as np
import pytest

from cllm.kernels.blas import gemm
from cllm.kernels.crossentropy import (BLOCK, CHUNK_ROWS, crossentropy_forward, crossentropy_forward_backward, head_loss,
                                        head_loss_backward)
from cllm.kernels.encoder import encoder_backward, encoder_forward
from cllm.kernels.gelu import ACTIVATIONS
from cllm.kernels.layernorm import layernorm_backward, layernorm_forward
from cllm.kernels.linear import linear_backward, linear_forward, linear_residual_forward

from .gradcheck import assert_grad_close, numerical_grad


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def test_encoder_backward_matches_finite_differences(rng):
    B, T, V, C, maxT = 2, 5, 7, 4, 8
    tokens = rng.integers(0, V, size=(B, T)).astype(np.int32)
    tokens[0, 0] = tokens[1, 3]  # a repeated token must accumulate
    wte, wpe = rng.normal(size=(V, C)), rng.normal(size=(maxT, C))
    out, dout = np.zeros((B * T, C)), rng.normal(size=(B * T, C))

    def f():
        encoder_forward(out, tokens, wte, wpe)
        return float(np.sum(out * dout))

    dwte, dwpe = np.zeros_like(wte), np.full_like(wpe, 7.0)  # dwpe is overwritten, rows past T zeroed
    encoder_backward(dwte, dwpe, dout, tokens)
    assert_grad_close(dwte.reshape(-1), numerical_grad(f, wte)[1])
    assert_grad_close(dwpe.reshape(-1), numerical_grad(f, wpe)[1])
    assert np.all(dwpe[T:] == 0.0)


def test_layernorm_backward_matches_finite_differences(rng):
    N, C = 6, 5
    inp, weight, bias = rng.normal(size=(N, C)), rng.normal(size=C), rng.normal(size=C)
    out, mean, rstd = np.zeros((N, C)), np.zeros(N), np.zeros(N)
    dout = rng.normal(size=(N, C))

    def f():
        layernorm_forward(out, mean, rstd, inp, weight, bias, 1e-5)
        return float(np.sum(out * dout))

    f()
    base = rng.normal(size=(N, C))
    dinp, dweight, dbias = base.copy(), np.zeros(C), np.zeros(C)
    layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd)
    assert_grad_close((dinp - base).reshape(-1), numerical_grad(f, inp)[1])  # accumulated, not overwritten
    assert_grad_close(dweight, numerical_grad(f, weight)[1])
    assert_grad_close(dbias, numerical_grad(f, bias)[1])


def test_linear_backward_matches_finite_differences(rng):
    N, C, OC = 5, 4, 3
    inp, weight, bias = rng.normal(size=(N, C)), rng.normal(size=(C, OC)), rng.normal(size=OC)
    out, dout = np.zeros((N, OC)), rng.normal(size=(N, OC))

    def f():
        linear_forward(out, inp, weight, bias)
        return float(np.sum(out * dout))

    dinp, dweight, dbias = np.zeros_like(inp), np.zeros_like(weight), np.zeros_like(bias)
    linear_backward(dinp, dweight, dbias, dout, inp, weight)
    assert_grad_close(dinp.reshape(-1), numerical_grad(f, inp)[1])
    assert_grad_close(dweight.reshape(-1), numerical_grad(f, weight)[1])
    assert_grad_close(dbias, numerical_grad(f, bias)[1])


def test_linear_residual_forward_adds_the_residual(rng):
    inp, weight, bias, residual = rng.normal(size=(4, 3)), rng.normal(size=(3, 2)), rng.normal(size=2), rng.normal(size=(4, 2))
    out = np.zeros((4, 2))
    linear_residual_forward(out, inp, weight, bias, residual)
    np.testing.assert_allclose(out, residual + inp @ weight + bias, rtol=1e-12)


GELUS = {
    "gelu_new": lambda x: 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "gelu": lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))),
}


@pytest.mark.parametrize("name", GELUS)
def test_gelu_backward_matches_finite_differences(rng, name):
    gelu_forward, gelu_backward = ACTIVATIONS[name]
    inp = rng.normal(scale=2.0, size=50)
    out, dout = np.zeros(50), rng.normal(size=50)

    def f():
        gelu_forward(out, inp)
        return float(np.sum(out * dout))

    f()
    np.testing.assert_allclose(out, [GELUS[name](x) for x in inp], rtol=1e-9, atol=1e-12)
    dinp = dout.copy()
    gelu_backward(dinp, inp)  # in place
    assert_grad_close(dinp, numerical_grad(f, inp)[1])


def test_crossentropy_backward_matches_finite_differences(rng):
    N, V = 6, 9
    logits, targets = rng.normal(scale=3.0, size=(N, V)), rng.integers(0, V, size=N).astype(np.int32)
    f = lambda: float(0.25 * crossentropy_forward(logits, targets)[0])  # noqa: E731
    numeric = numerical_grad(f, logits)[1]
    expected_loss = -np.sum(np.log(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))[np.arange(N), targets])
    grad = logits.copy()
    loss = crossentropy_forward_backward(grad, targets, 0.25)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    assert crossentropy_forward(logits, targets)[0] == pytest.approx(expected_loss, rel=1e-12)
    assert_grad_close(grad.reshape(-1), numeric)


def test_crossentropy_backward_matches_finite_differences_when_blocks_are_redone(rng):
    # the target's logit 75 below the others': every block's exponentials sum past the limit
    # and is redone from its own maximum, the second block's larger one rescaling the first
    V = BLOCK + 5
    logits, targets = rng.normal(size=(1, V)), np.array([3], np.int32)
    logits[0, 3] = -75.0
    logits[0, BLOCK + 2] = 4.0
    f = lambda: float(0.25 * crossentropy_forward(logits, targets)[0])  # noqa: E731
    probe, numeric = numerical_grad(f, logits, n_probe=200)
    grad = logits.copy()
    loss = crossentropy_forward_backward(grad, targets, 0.25)
    assert loss == pytest.approx(crossentropy_forward(logits, targets)[0], rel=1e-12)
    assert_grad_close(grad.reshape(-1)[probe], numeric)
    assert grad[0, 3] == pytest.approx(-0.25, rel=1e-12)


def test_crossentropy_counts_the_rows_whose_target_is_the_likeliest():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5], [1.0, 1.0, 0.0], [0.0, 0.2, 0.1]], dtype=np.float32)
    _, hits = crossentropy_forward(logits, np.array([1, 2, 0, 0], dtype=np.int32))
    assert hits == 2  # row 0 right, row 1 wrong, row 2 a tie counted right, row 3 wrong


def test_crossentropy_is_finite_for_extreme_logits():
    logits = np.array([[1000.0, -1000.0, 0.0]], dtype=np.float32)
    targets = np.array([1], dtype=np.int32)
    loss = crossentropy_forward_backward(logits.copy(), targets, 1.0)
    assert loss == pytest.approx(2000.0, rel=1e-6)


def test_crossentropy_reports_a_non_finite_loss():
    logits = np.array([[np.nan, 0.0, 1.0]], dtype=np.float32)
    assert not np.isfinite(crossentropy_forward(logits, np.array([2], dtype=np.int32))[0])


def test_fused_head_and_loss_over_several_chunks_equal_the_whole_formula(rng):
    N, C, V = 2 * CHUNK_ROWS + 7, 5, 13  # two full chunks and a partial one
    x, head = rng.normal(size=(N, C)), rng.normal(size=(V, C))
    targets = rng.integers(0, V, size=N).astype(np.int32)
    logits = x @ head.T
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    dlogits = 0.5 * (np.exp(logp) - np.eye(V)[targets])
    chunk = np.zeros((CHUNK_ROWS, V))
    dx, dhead = np.full((N, C), np.nan), np.full((V, C), np.nan)  # both overwritten
    loss = head_loss_backward(x, head, targets, 0.5, dx, dhead, chunk)
    assert loss == pytest.approx(-logp[np.arange(N), targets].sum(), rel=1e-12)
    total, hits = head_loss(x, head, targets, chunk)
    assert total == pytest.approx(loss, rel=1e-12)
    assert hits == np.sum(logits[np.arange(N), targets] >= logits.max(1))  # the target is the likeliest
    np.testing.assert_allclose(dx, dlogits @ head, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dhead, dlogits.T @ x, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_takes_transposed_and_strided_operands_and_adds(rng, dtype):
    a = rng.normal(size=(9, 12)).astype(dtype)
    b = rng.normal(size=(7, 5)).astype(dtype)
    out = rng.normal(size=(4, 11)).astype(dtype)
    before = out.copy()
    view = out[:, 2:7]  # rows of stride 11
    gemm(view, a[:4, 3:10], b, True)  # a strided view
    np.testing.assert_allclose(view, before[:, 2:7] + a[:4, 3:10] @ b, rtol=1e-5)
    gemm(view, a[2:9, :4].T, b, False)  # a transposed view
    np.testing.assert_allclose(view, a[2:9, :4].T @ b, rtol=1e-5)
    np.testing.assert_array_equal(out[:, :2], before[:, :2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_row_gemm_takes_every_operand_layout_and_adds(rng, dtype):
    # one row goes through gemv: b row-major, b a transposed view (the tied head), a strided row
    a = rng.normal(size=(3, 16)).astype(dtype)
    b = rng.normal(size=(8, 6)).astype(dtype)
    head = rng.normal(size=(6, 8)).astype(dtype)
    out = rng.normal(size=(2, 6)).astype(dtype)
    before = out.copy()
    gemm(out[1:], a[1:2, ::2], b, False)
    np.testing.assert_allclose(out[1:], a[1:2, ::2] @ b, rtol=1e-5)
    gemm(out[:1], a[:1, :8], head.T, True)
    np.testing.assert_allclose(out[:1], before[:1] + a[:1, :8] @ head.T, rtol=1e-5)
    column = a[:, :1]  # a (1,3) row that is a column's transpose
    gemm(out[:1, :4], column.T, b[:3, :4], False)
    np.testing.assert_allclose(out[:1, :4], column.T @ b[:3, :4], rtol=1e-5)
