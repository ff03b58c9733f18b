"""GELU, tanh approximation (as in GPT-2).

tanh(u) is computed as 1 - 2 / (exp(2u) + 1): numba compiles exp to a loop several
times faster than tanh, and the form saturates correctly at both ends.
"""

import math

import numpy as np

from .jit import kernel

GELU_SCALE = math.sqrt(2.0 / math.pi)


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
