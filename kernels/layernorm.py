"""LayerNorm over the channel dimension."""

import numpy as np

from .jit import kernel


@kernel
def layernorm_forward(out, mean, rstd, inp, weight, bias, eps):
    # inp, out (N,C); mean, rstd (N,) are kept for the backward pass
    N, C = inp.shape
    t = inp.dtype.type
    inv_c, eps = t(1.0 / C), t(eps)
    for i in range(N):
        x, y = inp[i], out[i]
        m = t(0.0)
        for c in range(C):
            m += x[c]
        m *= inv_c
        var = t(0.0)
        for c in range(C):
            d = x[c] - m
            var += d * d
        s = t(1.0) / np.sqrt(var * inv_c + eps)
        for c in range(C):
            y[c] = (x[c] - m) * s * weight[c] + bias[c]
        mean[i] = m
        rstd[i] = s


@kernel
def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd):
    # dinp (N,C) is accumulated into (the residual stream's gradient);
    # dweight, dbias (C,) are overwritten.
    N, C = inp.shape
    t = inp.dtype.type
    inv_c = t(1.0 / C)
    dweight[:] = 0.0
    dbias[:] = 0.0
    for i in range(N):
        x, g, dx = inp[i], dout[i], dinp[i]
        m = mean[i]
        s = rstd[i]
        mean_dnorm = t(0.0)
        mean_dnorm_norm = t(0.0)
        for c in range(C):
            dnorm = weight[c] * g[c]
            mean_dnorm += dnorm
            mean_dnorm_norm += dnorm * (x[c] - m) * s
        mean_dnorm *= inv_c
        mean_dnorm_norm *= inv_c
        for c in range(C):
            norm = (x[c] - m) * s
            dbias[c] += g[c]
            dweight[c] += norm * g[c]
            dx[c] += (weight[c] * g[c] - mean_dnorm - norm * mean_dnorm_norm) * s
