"""GELU: the tanh approximation of GPT-2 (Hugging Face's ``gelu_new``) and the exact form
x * Phi(x) with the error function (``gelu``).

gelu_new is 0.5 * x * (1 + tanh(u)), u = sqrt(2/pi) * (x + 0.044715 x^3). On float32,
``half_tanh`` gives 0.5 * tanh(u) as one rational function of x (an odd degree-9 numerator
over a degree-10 denominator, a minimax fit on |x| <= 5.2, past which tanh(u) is 1 in
float32): 11 multiply-adds and a division, which LLVM vectorises, against about twice that
for an exponential and a division. Its error is below 4e-7 of tanh(u)'s range, on the order of
float32 rounding; the same loss of relative precision for large negative x as in the formula
itself. On float64 it is ``np.tanh`` of u, so the float64 gradient checks see exact calculus.

The backward pass needs 1 - tanh(u)^2, which the rational function's absolute error would
swamp near saturation; it takes tanh(u) as 1 - 2 / (exp(2u) + 1) with ``vecmath.exp``,
accurate relative to 1 - tanh(u) there, and saturating correctly at both ends.
"""

import math

import numpy as np
from numba import types
from numba.extending import overload

from .jit import FASTMATH, kernel
from .vecmath import exp

GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBE = 0.044715
INV_SQRT2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# 0.5 * tanh(u(x)) ~ x * P(x^2) / Q(x^2) on |x| <= TANH_EDGE, Q monic
TANH_EDGE = np.float32(5.2)
P0, P1, P2 = np.float32(899660.9375), np.float32(88949.0078125), np.float32(8695.2744140625)
P3, P4 = np.float32(423.5057373046875), np.float32(10.682940483093262)
Q0, Q1, Q2 = np.float32(2255117.75), np.float32(600661.25), np.float32(64758.640625)
Q3, Q4 = np.float32(3556.39404296875), np.float32(180.22975158691406)


def half_tanh(x):
    """0.5 * tanh(sqrt(2/pi) * (x + 0.044715 x^3)) (compiled only inside kernels)."""
    return 0.5 * np.tanh(GELU_SCALE * (x + GELU_CUBE * x * x * x))


@overload(half_tanh, jit_options={"fastmath": FASTMATH})
def half_tanh_impl(x):
    if x != types.float32:
        return lambda x: 0.5 * np.tanh(GELU_SCALE * (x + GELU_CUBE * x * x * x))

    def rational(x):
        xc = min(max(x, -TANH_EDGE), TANH_EDGE)  # keeps a NaN x
        z = xc * xc
        p = (((P4 * z + P3) * z + P2) * z + P1) * z + P0
        q = ((((z + Q4) * z + Q3) * z + Q2) * z + Q1) * z + Q0
        return xc * p / q

    return rational


@kernel
def gelu_forward(out, inp):
    # inp, out flat (N,)
    half = inp.dtype.type(0.5)
    for i in range(inp.shape[0]):
        x = inp[i]
        out[i] = x * (half + half_tanh(x))


@kernel
def gelu_backward(grad, inp):
    # in place: grad (N,) holds dL/dout on entry and dL/dinp on return; inp (N,). Two arrays,
    # not an output aliasing an input, so the loop vectorises (LLVM's overlap check would fail)
    t = inp.dtype.type
    two_scale, cube = t(2.0 * GELU_SCALE), t(GELU_CUBE)
    half_scale, cube3 = t(0.5 * GELU_SCALE), t(3.0 * GELU_CUBE)
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
