"""The Vector helpers against numpy: products kept in registers, scaled copies, prefetching."""

import numpy as np
import pytest

from cllm.kernels.jit import kernel
from cllm.kernels.simd import copy_scaled, fma, lanes, load, prefetch, splat, store


@kernel
def row_times_matrix(out, a, m):
    # out[:] = a @ m with m (K, n), n a multiple of the lane count: one Vector accumulator per chunk
    w = lanes(out)
    for j in range(0, out.shape[0], w):
        acc = splat(out.dtype.type(0.0))
        for k in range(a.shape[0]):
            prefetch(m[k], j)
            acc = fma(a[k], load(m[k], j), acc)
        store(out, j, acc)


@kernel
def copy_rows(dst, src, col, n, scale):
    for t in range(src.shape[0]):
        copy_scaled(dst[t], 1, src[t], col, n, scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_products_equal_numpy(dtype):
    rng = np.random.default_rng(1)
    a, m = rng.normal(size=7).astype(dtype), rng.normal(size=(7, 64)).astype(dtype)
    out = np.zeros(64, dtype)
    row_times_matrix(out, a, m)
    np.testing.assert_allclose(out, a @ m, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [3, 16, 37])
def test_copy_scaled_copies_exactly_n_elements_of_contiguous_and_strided_rows(dtype, n):
    src = np.random.default_rng(2).normal(size=(5, 80)).astype(dtype)
    for dst, source in ((np.zeros((5, 60), dtype), src), (np.zeros((5, 120), dtype)[:, ::2], src[:, ::-1])):
        copy_rows(dst, source, 4, n, 0.5)
        expected = np.zeros_like(dst)
        expected[:, 1:1 + n] = 0.5 * source[:, 4:4 + n]
        np.testing.assert_array_equal(dst, expected)
