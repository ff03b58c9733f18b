"""GELU: the tanh approximation of GPT-2 (Hugging Face's ``gelu_new``) and the exact form
x * Phi(x) with the error function (``gelu``).

gelu_new is 0.5 * x * (1 + tanh(u)), u = sqrt(2/pi) * (x + 0.044715 x^3), which is
x * s with s = sigmoid(2u) = 1 / (1 + e), e = exp(-2u) = 2**(x * (T1 + T3 * x^2)): two
multiply-adds, ``vecmath.exp2`` and one division, all of which LLVM vectorises (numba's
tanh does not). Unlike 1 + tanh(u), nothing cancels where s is small, so large negative x
keeps its relative precision, and 1 - s = e * s gives the backward pass s * (1 - s) without
cancelling either. Constants take the array's dtype, so float32 runs in float32 throughout;
on float64 exp2 is numpy's, so the float64 gradient checks see exact calculus.
"""

import math

import numpy as np

from .jit import kernel
from .vecmath import LOG2E, exp2

GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBE = 0.044715
T1, T3 = -2.0 * GELU_SCALE * LOG2E, -2.0 * GELU_SCALE * GELU_CUBE * LOG2E  # -2u * log2(e) = x * (T1 + T3 x^2)
X_MIN = -7.0  # the backward takes x below this as X_MIN: the derivative there is under 4e-14, and e, s and
# their products stay inside float32's normal range (at x = -200, e * s * s would be inf * 0)
INV_SQRT2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@kernel
def gelu_forward(out, inp):
    # inp, out flat (N,)
    t = inp.dtype.type
    t1, t3 = t(T1), t(T3)
    for i in range(inp.shape[0]):
        x = inp[i]
        out[i] = x / (t(1.0) + exp2(x * (t1 + t3 * x * x)))


@kernel
def gelu_backward(grad, inp):
    # in place: grad (N,) holds dL/dout on entry and dL/dinp on return; inp (N,). Two arrays,
    # not an output aliasing an input, so the loop vectorises (LLVM's overlap check would fail).
    # d/dx x*s = s + x * s * (1 - s) * 2u'(x), 1 - s = e * s, 2u' = 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    t = inp.dtype.type
    t1, t3, x_min = t(T1), t(T3), t(X_MIN)
    two_scale, cube3 = t(2.0 * GELU_SCALE), t(3.0 * GELU_CUBE)
    for i in range(inp.shape[0]):
        x = max(inp[i], x_min)  # keeps a NaN
        e = exp2(x * (t1 + t3 * x * x))
        s = t(1.0) / (t(1.0) + e)
        grad[i] *= s + x * e * s * s * two_scale * (t(1.0) + cube3 * x * x)


@kernel
def gelu_exact_forward(out, inp):
    # inp, out flat (N,): x * Phi(x), Phi the standard normal's distribution function
    for i in range(inp.shape[0]):
        x = inp[i]
        out[i] = 0.5 * x * (1.0 + math.erf(x * INV_SQRT2))


@kernel
def gelu_exact_backward(grad, inp):
    # in place as gelu_backward; d/dx x*Phi(x) = Phi(x) + x*phi(x)
    for i in range(inp.shape[0]):
        x = inp[i]
        local = 0.5 * (1.0 + math.erf(x * INV_SQRT2)) + x * INV_SQRT_2PI * np.exp(-0.5 * x * x)
        grad[i] *= local


# Hugging Face's activation_function names -> (forward, backward)
ACTIVATIONS = {"gelu_new": (gelu_forward, gelu_backward), "gelu": (gelu_exact_forward, gelu_exact_backward)}
