"""LayerNorm over the channel dimension."""

import numpy as np

from .jit import kernel


@kernel
def layernorm_forward(out, mean, rstd, inp, weight, bias, eps):
    # inp, out (N,C); mean, rstd (N,) are kept for the backward pass
    N, C = inp.shape
    for i in range(N):
        m = 0.0
        for c in range(C):
            m += inp[i, c]
        m /= C
        var = 0.0
        for c in range(C):
            d = inp[i, c] - m
            var += d * d
        var /= C
        s = 1.0 / np.sqrt(var + eps)
        for c in range(C):
            out[i, c] = (inp[i, c] - m) * s * weight[c] + bias[c]
        mean[i] = m
        rstd[i] = s


@kernel
def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd):
    # dinp (N,C) is accumulated into (the residual stream's gradient);
    # dweight, dbias (C,) are overwritten.
    N, C = inp.shape
    dweight[:] = 0.0
    dbias[:] = 0.0
    for i in range(N):
        m = mean[i]
        s = rstd[i]
        mean_dnorm = 0.0
        mean_dnorm_norm = 0.0
        for c in range(C):
            norm = (inp[i, c] - m) * s
            dnorm = weight[c] * dout[i, c]
            mean_dnorm += dnorm
            mean_dnorm_norm += dnorm * norm
        mean_dnorm /= C
        mean_dnorm_norm /= C
        for c in range(C):
            norm = (inp[i, c] - m) * s
            g = dout[i, c]
            dbias[c] += g
            dweight[c] += norm * g
            dinp[i, c] += (weight[c] * g - mean_dnorm - norm * mean_dnorm_norm) * s
