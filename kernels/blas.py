"""``gemm``: out (+)= a @ b through the BLAS numpy itself loaded, with beta = 1 when adding.

numpy's ``matmul`` can only overwrite its output; the fused cross-entropy adds each chunk
of rows into the head's gradient, which is what BLAS's beta argument is for. The library is
the one threadpoolctl finds for numpy (so the coordinator's one-thread-per-worker limit
applies to it), called through ctypes, which releases the GIL for the call. On a numpy
whose BLAS exports no CBLAS ``gemm`` the product goes through ``np.matmul`` and a sum.

A product of one row (a token of generation) goes to ``gemv``: it reads the matrix once,
where ``gemm`` first packs it into a copy (GPT-2 124M's 768x3072 layer: 1.07 ms through
sgemm, 0.13 ms through sgemv, one thread, the matrix in cache).
"""

import ctypes
import functools

import numpy as np
from threadpoolctl import ThreadpoolController, threadpool_info

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
# (prefix, suffix, integer type) of the CBLAS names in the builds numpy ships with
NAMINGS = (("scipy_", "64_", ctypes.c_int64), ("", "64_", ctypes.c_int64), ("scipy_", "", ctypes.c_int),
           ("", "", ctypes.c_int))


def find_cblas() -> tuple:
    """({dtype: gemm}, {dtype: gemv}): the CBLAS functions of numpy's BLAS, ({}, {}) when it has none."""
    for info in threadpool_info():
        if info.get("user_api") != "blas":
            continue
        lib = ctypes.CDLL(info["filepath"])
        for prefix, suffix, integer in NAMINGS:
            gemms, gemvs = {}, {}
            for dtype, letter, real in ((np.float32, "s", ctypes.c_float), (np.float64, "d", ctypes.c_double)):
                gemm_fn = getattr(lib, f"{prefix}cblas_{letter}gemm{suffix}", None)
                gemv_fn = getattr(lib, f"{prefix}cblas_{letter}gemv{suffix}", None)
                if gemm_fn is None or gemv_fn is None:
                    break
                gemm_fn.restype = gemv_fn.restype = None
                tail = [real, ctypes.c_void_p, integer, ctypes.c_void_p, integer, real, ctypes.c_void_p, integer]
                gemm_fn.argtypes = [ctypes.c_int] * 3 + [integer] * 3 + tail
                gemv_fn.argtypes = [ctypes.c_int] * 2 + [integer] * 2 + tail
                gemms[np.dtype(dtype)], gemvs[np.dtype(dtype)] = gemm_fn, gemv_fn
            else:
                return gemms, gemvs
    return {}, {}


CBLAS, CBLAS_GEMV = find_cblas()


@functools.cache
def controller() -> ThreadpoolController:
    return ThreadpoolController()


def one_blas_thread():
    """A context in which BLAS runs on one thread (about 25 us to enter and leave)."""
    return controller().limit(limits=1, user_api="blas")


def operand(x: np.ndarray) -> tuple:
    """(transpose flag, leading dimension, array) of a matrix with one unit stride."""
    item = x.itemsize
    if x.strides[1] == item and x.strides[0] >= max(1, x.shape[1]) * item:
        return NO_TRANS, x.strides[0] // item, x
    if x.strides[0] == item and x.strides[1] >= max(1, x.shape[0]) * item:
        return TRANS, x.strides[1] // item, x
    x = np.ascontiguousarray(x)
    return NO_TRANS, max(1, x.shape[1]), x


def gemm(out: np.ndarray, a: np.ndarray, b: np.ndarray, accumulate: bool) -> None:
    """out (M,N) = a (M,K) @ b (K,N), or += with ``accumulate``; a and b may be transposed views,
    out has rows of unit stride."""
    fn = CBLAS.get(out.dtype)
    if fn is None or a.dtype != out.dtype or b.dtype != out.dtype or out.strides[1] != out.itemsize:
        if accumulate:
            out += a @ b
        else:
            np.matmul(a, b, out=out)
        return
    if out.shape[0] == 1 and a.shape[1] > 0:
        vector_product(CBLAS_GEMV[out.dtype], out, a, b, accumulate)
        return
    call(fn, out, a, b, accumulate)


def vector_product(fn, out: np.ndarray, a: np.ndarray, b: np.ndarray, accumulate: bool) -> None:
    """out (1,N) (+)= a (1,K) @ b (K,N) through the CBLAS-style row-major gemv ``fn``."""
    N, K = out.shape[1], a.shape[1]
    if N == 0:
        return
    x = a if a.strides[1] == a.itemsize else np.ascontiguousarray(a)
    tb, ldb, b = operand(b)
    rows, cols, trans = (K, N, TRANS) if tb == NO_TRANS else (N, K, NO_TRANS)  # b, or b's transpose, row-major
    fn(ROW_MAJOR, trans, rows, cols, 1.0, b.ctypes.data, ldb, x.ctypes.data, 1, 1.0 if accumulate else 0.0,
       out.ctypes.data, 1)


def call(fn, out: np.ndarray, a: np.ndarray, b: np.ndarray, accumulate: bool) -> None:
    """out (+)= a @ b through the CBLAS-style row-major gemm ``fn`` (sgemm, or oneMKL's bf16 product)."""
    M, N = out.shape
    K = a.shape[1]
    if M == 0 or N == 0:
        return
    ta, lda, a = operand(a)
    tb, ldb, b = operand(b)
    fn(ROW_MAJOR, ta, tb, M, N, K, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb, 1.0 if accumulate else 0.0,
       out.ctypes.data, max(1, out.strides[0] // out.itemsize))
