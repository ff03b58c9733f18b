"""bfloat16 products: rounding, CLLM's AVX512_BF16 product and oneMKL's, and the whole model against float32."""

from dataclasses import replace

import numpy as np
import pytest

from cllm.kernels.model import Activations, GPTConfig, ParamLayout, forward, forward_backward, init_params
from cllm.kernels.dotbf16 import KC, MC, MR, NR
from cllm.kernels.precision import (FIRST, SECOND, Products16, Weights16, backend, bf16_to_float32, cpu_flags,
                                    mkl_gemm, read_cpuinfo, round_to_bf16, unavailable)

HAS_AVX512_BF16 = "avx512_bf16" in cpu_flags(read_cpuinfo())
needs_bf16 = pytest.mark.skipif(unavailable() is not None, reason=f"bf16 cannot run here: {unavailable()}")
PRODUCTS = [pytest.param("avx512", marks=pytest.mark.skipif(not HAS_AVX512_BF16, reason="the CPU has no AVX512_BF16")),
            pytest.param("onemkl", marks=pytest.mark.skipif(mkl_gemm() is None, reason="oneMKL is not installed"))]

CFG = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)


def rounded(x: np.ndarray) -> np.ndarray:
    out = np.empty(x.size, np.uint16)
    round_to_bf16(out, np.ascontiguousarray(x, dtype=np.float32).reshape(-1))
    return out.reshape(x.shape)


def test_rounding_is_to_nearest_with_ties_to_even():
    ulp = 2.0 ** -7  # bfloat16 keeps 7 bits of mantissa: the spacing just above 1
    x = np.array([1.0, 1 + ulp / 2, 1 + 1.5 * ulp, 1 + ulp / 2 + 2 ** -20, -2.5, np.finfo(np.float32).max, 1e-40], np.float32)
    expected = np.array([1.0, 1.0, 1 + 2 * ulp, 1 + ulp, -2.5, np.inf, 1e-40], np.float32)
    got = bf16_to_float32(rounded(x))
    np.testing.assert_array_equal(got[:6], expected[:6])
    assert got[6] == pytest.approx(1e-40, rel=2 ** -7)  # subnormals keep their leading bits
    special = bf16_to_float32(rounded(np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)))
    assert np.isnan(special[:2]).all()
    np.testing.assert_array_equal(special[2:], [np.inf, -np.inf, 0.0, -0.0])
    assert np.signbit(special[5])


def test_rounding_matches_pytorch_bfloat16():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal(100_000).astype(np.float32) * 10.0 ** np.arange(-20, 20, 0.0004)
    ours = rounded(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)


def test_rounding_error_is_within_half_a_bfloat16_ulp():
    x = np.random.default_rng(1).standard_normal(50_000).astype(np.float32)
    relative = np.abs(bf16_to_float32(rounded(x)) - x) / np.abs(x)
    assert relative.max() <= 2.0 ** -8


def test_the_cpu_probe_reads_the_flags_and_chooses_the_product():
    assert cpu_flags("processor : 0\nflags : fpu sse avx512f avx512_bf16 avx2\n") == {"avx512_bf16"}
    assert cpu_flags("flags : fpu amx_bf16 amx_tile\n") == {"amx_bf16"}
    assert cpu_flags("flags : fpu sse avx2 avx512f\n") == set()
    assert "neither AVX512_BF16 nor AMX-BF16" in unavailable(cpuinfo="flags : fpu sse avx2\n")
    assert backend("flags : fpu avx512_bf16\n") == "avx512" and unavailable(cpuinfo="flags : fpu avx512_bf16\n") is None
    amx = "flags : fpu avx512_bf16 amx_bf16 amx_tile\n"
    assert backend(amx) == ("onemkl" if mkl_gemm() is not None else "avx512")


def exact_product(a, b):
    return bf16_to_float32(rounded(a)).astype(np.float64) @ bf16_to_float32(rounded(b)).astype(np.float64)


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("transpose_a, transpose_b", [(False, False), (True, False), (False, True), (True, True)])
def test_bf16_product_is_the_float32_sum_of_the_rounded_operands(product, transpose_a, transpose_b):
    rng = np.random.default_rng(2)
    M, K, N = 37, 70, 29
    a = rng.standard_normal((K, M) if transpose_a else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if transpose_b else (K, N)).astype(np.float32)
    a, b = (a.T if transpose_a else a), (b.T if transpose_b else b)
    exact = exact_product(a, b)
    mm = Products16(M * K, K * N, product)
    out = np.full((M, N), 5.0, np.float32)
    mm(out, a, b)
    np.testing.assert_allclose(out, exact, rtol=1e-5, atol=1e-4)
    mm(out, a, mm.operand(b, SECOND), accumulate=True)  # an operand rounded beforehand is used as it is
    np.testing.assert_allclose(out, 2 * exact, rtol=1e-5, atol=2e-4)
    assert np.abs(out - 2 * a.astype(np.float64) @ b).max() > 1e-3  # and the operands really were rounded


@pytest.mark.skipif(not HAS_AVX512_BF16, reason="the CPU has no AVX512_BF16")
@pytest.mark.parametrize("M, K, N", [(1, 1, 1), (MR, 2, NR), (MR + 1, 3, NR + 1), (MC + MR + 5, KC + 7, 3 * NR - 1),
                                     (2 * MC, 2 * KC + 1, 70), (5, 2 * KC, 2 * NR), (40, 0, 9), (0, 8, 3)])
def test_avx512_product_covers_every_edge_of_its_blocks(M, K, N):
    # odd K, K across several blocks of KC, rows across blocks of MC, tiles overhanging out's
    # edges, and an out whose rows are longer than N
    rng = np.random.default_rng(M * 1000 + K + N)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((N, K)).astype(np.float32).T
    exact = exact_product(a, b)
    mm = Products16(M * K, K * N, "avx512")
    wide = np.full((M, N + 5), 3.0, np.float32)
    out = wide[:, :N]
    mm(out, a, b)
    np.testing.assert_allclose(out, exact, rtol=1e-5, atol=1e-4 * max(1, K) ** 0.5)
    mm(out, a, b, accumulate=True)
    np.testing.assert_allclose(out, 2 * exact, rtol=1e-5, atol=2e-4 * max(1, K) ** 0.5)
    assert (wide[:, N:] == 3.0).all()  # nothing written past the view


@pytest.mark.skipif(not HAS_AVX512_BF16, reason="the CPU has no AVX512_BF16")
def test_avx512_product_carries_infinities_and_nan():
    a = np.ones((MR + 1, 4), np.float32)
    b = np.ones((4, NR + 1), np.float32)
    a[0, 1], a[MR, 2], b[3, NR] = np.inf, np.nan, -np.inf
    out = np.zeros((MR + 1, NR + 1), np.float32)
    Products16(a.size, b.size, "avx512")(out, a, b)
    assert np.isposinf(out[0, :NR]).all() and np.isnan(out[MR]).all() and np.isnan(out[0, NR])
    assert (out[1:MR, :NR] == 4.0).all() and np.isneginf(out[1:MR, NR]).all()


def relative_error(x, reference):
    return np.linalg.norm(x - reference) / np.linalg.norm(reference)


@needs_bf16
@pytest.mark.parametrize("cfg", [CFG, replace(CFG, tied_head=False)], ids=["tied head", "untied head"])
def test_bf16_forward_and_backward_match_float32_within_bfloat16_tolerance(cfg):
    layout = ParamLayout(cfg)
    params = init_params(cfg, seed=3)
    params += np.random.default_rng(4).normal(scale=0.05, size=params.shape).astype(np.float32)
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, cfg.vocab_size, size=(4, 16)).astype(np.int32)
    targets = rng.integers(0, cfg.vocab_size, size=(4, 16)).astype(np.int32)
    w32 = layout.tensors(params)
    weights16 = Weights16(layout)
    weights16.refresh(params)
    w16 = weights16.tensors(w32)
    grads = {}
    for precision, w in (("fp32", w32), ("bf16", w16)):
        acts = Activations(cfg, 4, 16, precision=precision)
        grad = np.full(layout.size, np.nan, np.float32)
        loss = forward_backward(w, layout.tensors(grad), acts, tokens, targets, 1.0 / tokens.size)
        grads[precision] = (loss, grad, forward(w, acts, tokens))
    (loss32, grad32, logits32), (loss16, grad16, logits16) = grads["fp32"], grads["bf16"]
    assert np.isfinite(grad16).all()
    assert loss16 == pytest.approx(loss32, rel=1e-2)
    assert relative_error(logits16, logits32) < 1e-2
    assert logits16.tolist() != logits32.tolist()  # the bfloat16 products did run
    assert relative_error(grad16, grad32) < 1e-2
    for name in layout.shapes:  # the small tensors (LayerNorm gains) a little looser
        piece = layout.slice(name)
        assert relative_error(grad16[piece], grad32[piece]) < 2e-2, name


@needs_bf16
def test_weights16_round_the_products_weights_and_keep_the_rest_float32():
    layout = ParamLayout(CFG)
    params = init_params(CFG, seed=1)
    weights16 = Weights16(layout)
    weights16.refresh(params)
    w = weights16.tensors(layout.tensors(params))
    assert w.blocks[0].c_fc_weight.dtype == np.uint16 and w.head.dtype == np.uint16
    assert w.wte.dtype == np.float32 and w.blocks[0].c_fc_bias.dtype == np.float32
    np.testing.assert_array_equal(bf16_to_float32(w.head), bf16_to_float32(rounded(params[layout.slice("wte.weight")]))
                                  .reshape(w.head.shape))
    params[layout.slice("h.1.mlp.c_proj.weight")] += 1.0
    weights16.refresh(params, *(lambda s: (s.start, s.stop))(layout.slice("h.1.mlp.c_proj.weight")))
    assert np.abs(bf16_to_float32(w.blocks[1].mlp_c_proj_weight) - params[layout.slice("h.1.mlp.c_proj.weight")]
                  .reshape(CFG.n_embd * 4, CFG.n_embd)).max() < 1e-2
