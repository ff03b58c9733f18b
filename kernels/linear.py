"""Linear layer in the Conv1D layout: out = inp @ weight + bias, weight (in, out).

The matrix products go to a worker's ``Products`` (float32 BLAS, or bfloat16; both release
the GIL); the bias and residual additions are numba kernels.
"""

from .jit import kernel
from .precision import FLOAT32, SECOND


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


def linear_forward(out, inp, weight, bias, mm=FLOAT32):
    """out (N,OC) = inp (N,C) @ weight (C,OC) + bias (OC,)."""
    mm(out, inp, weight)
    add_bias(out, bias)


def linear_residual_forward(out, inp, weight, bias, residual, mm=FLOAT32):
    """out (N,C) = residual (N,C) + inp (N,K) @ weight (K,C) + bias (C,)."""
    mm(out, inp, weight)
    add_bias_residual(out, bias, residual)


def linear_backward(dinp, dweight, dbias, dout, inp, weight, mm=FLOAT32):
    """Overwrite dinp (N,C), dweight (C,OC), dbias (OC,) from dout (N,OC)."""
    bias_backward(dbias, dout)
    dout = mm.operand(dout, SECOND)  # rounded once for both products; the second operand of the first
    mm(dweight, inp.T, dout)
    mm(dinp, dout, weight.T)
