"""GELU: the tanh approximation of GPT-2 (Hugging Face's ``gelu_new``) and the exact form
x * Phi(x) with the error function (``gelu``).

tanh(u) is computed as 1 - 2 / (exp(2u) + 1): numba compiles exp to a loop several
times faster than tanh, and the form saturates correctly at both ends.
"""

import math

import numpy as np

from .jit import kernel

GELU_SCALE = math.sqrt(2.0 / math.pi)
INV_SQRT2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@kernel
def gelu_forward(out, inp):
    # inp, out flat (N,)
    for i in range(inp.shape[0]):
        x = inp[i]
        u = GELU_SCALE * (x + 0.044715 * x * x * x)
        out[i] = x - x / (np.exp(2.0 * u) + 1.0)  # 0.5 * x * (1 + tanh(u))


@kernel
def gelu_backward(dinp, inp, dout):
    # dinp may be dout itself (in place); all flat (N,)
    for i in range(inp.shape[0]):
        x = inp[i]
        u = GELU_SCALE * (x + 0.044715 * x * x * x)
        th = 1.0 - 2.0 / (np.exp(2.0 * u) + 1.0)
        sech2 = 1.0 - th * th
        local = 0.5 * (1.0 + th) + 0.5 * x * sech2 * GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x)
        dinp[i] = local * dout[i]


@kernel
def gelu_exact_forward(out, inp):
    # inp, out flat (N,): x * Phi(x), Phi the standard normal's distribution function
    for i in range(inp.shape[0]):
        x = inp[i]
        out[i] = 0.5 * x * (1.0 + math.erf(x * INV_SQRT2))


@kernel
def gelu_exact_backward(dinp, inp, dout):
    # dinp may be dout itself (in place); all flat (N,). d/dx x*Phi(x) = Phi(x) + x*phi(x)
    for i in range(inp.shape[0]):
        x = inp[i]
        local = 0.5 * (1.0 + math.erf(x * INV_SQRT2)) + x * INV_SQRT_2PI * np.exp(-0.5 * x * x)
        dinp[i] = local * dout[i]


# Hugging Face's activation_function names -> (forward, backward)
ACTIVATIONS = {"gelu_new": (gelu_forward, gelu_backward), "gelu": (gelu_exact_forward, gelu_exact_backward)}
