"""GELU: the tanh approximation of GPT-2 (Hugging Face's ``gelu_new``) and the exact form
x * Phi(x) with the error function (``gelu``).

tanh(u) is computed as 1 - 2 / (exp(2u) + 1) with ``vecmath.exp``, which vectorises (numba's
tanh does not), and the form saturates correctly at both ends. Constants take the array's
dtype, so float32 runs in float32 throughout.
"""

import math

import numpy as np

from .jit import kernel
from .vecmath import exp

GELU_SCALE = math.sqrt(2.0 / math.pi)
INV_SQRT2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@kernel
def gelu_forward(out, inp):
    # inp, out flat (N,)
    t = inp.dtype.type
    two_scale, cube = t(2.0 * GELU_SCALE), t(0.044715)
    for i in range(inp.shape[0]):
        x = inp[i]
        out[i] = x - x / (exp(two_scale * (x + cube * x * x * x)) + t(1.0))  # 0.5 * x * (1 + tanh(u))


@kernel
def gelu_backward(grad, inp):
    # in place: grad (N,) holds dL/dout on entry and dL/dinp on return; inp (N,). Two arrays,
    # not an output aliasing an input, so the loop vectorises (LLVM's overlap check would fail)
    t = inp.dtype.type
    two_scale, cube, half_scale, cube3 = t(2.0 * GELU_SCALE), t(0.044715), t(0.5 * GELU_SCALE), t(3.0 * 0.044715)
    for i in range(inp.shape[0]):
        x = inp[i]
        th = t(1.0) - t(2.0) / (exp(two_scale * (x + cube * x * x * x)) + t(1.0))
        local = t(0.5) * (t(1.0) + th) + half_scale * x * (t(1.0) - th * th) * (t(1.0) + cube3 * x * x)
        grad[i] *= local


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
