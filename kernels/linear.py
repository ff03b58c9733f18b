"""Linear layer in the Conv1D layout: out = inp @ weight + bias, weight (in, out).

The matrix products go to BLAS through numpy (which releases the GIL); the bias
and residual additions are numba kernels.
"""

import numpy as np

from .jit import kernel


@kernel
def add_bias(out, bias):
    # out (N,OC) += bias (OC,)
    N, OC = out.shape
    for i in range(N):
        for o in range(OC):
            out[i, o] += bias[o]


@kernel
def add_bias_residual(out, bias, residual):
    # out (N,C) += bias (C,) + residual (N,C): a projection joining the residual stream
    N, C = out.shape
    for i in range(N):
        for c in range(C):
            out[i, c] += bias[c] + residual[i, c]


@kernel
def bias_backward(dbias, dout):
    # dbias (OC,) = column sums of dout (N,OC), overwritten
    N, OC = dout.shape
    dbias[:] = 0.0
    for i in range(N):
        for o in range(OC):
            dbias[o] += dout[i, o]


def linear_forward(out, inp, weight, bias):
    """out (N,OC) = inp (N,C) @ weight (C,OC) + bias (OC,)."""
    np.matmul(inp, weight, out=out)
    add_bias(out, bias)


def linear_residual_forward(out, inp, weight, bias, residual):
    """out (N,C) = residual (N,C) + inp (N,K) @ weight (K,C) + bias (C,)."""
    np.matmul(inp, weight, out=out)
    add_bias_residual(out, bias, residual)


def linear_backward(dinp, dweight, dbias, dout, inp, weight):
    """Overwrite dinp (N,C), dweight (C,OC), dbias (OC,) from dout (N,OC)."""
    np.matmul(inp.T, dout, out=dweight)
    bias_backward(dbias, dout)
    np.matmul(dout, weight.T, out=dinp)
