"""Optimizer updates over one contiguous slice of the flat parameter buffer.

Each update touches only its slice, so the pool can split one optimizer step across
threads by parameter ranges. ``grad_scale`` applies gradient clipping without a
separate pass over the gradient.
"""

import numpy as np

from .jit import kernel


@kernel
def adamw_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, grad_scale):
    # param, grad, m, v flat (N,); step counts from 1. Decoupled weight decay.
    bias1 = 1.0 - beta1 ** step
    bias2 = 1.0 - beta2 ** step
    for i in range(param.shape[0]):
        g = grad[i] * grad_scale
        mi = beta1 * m[i] + (1.0 - beta1) * g
        vi = beta2 * v[i] + (1.0 - beta2) * g * g
        m[i] = mi
        v[i] = vi
        update = (mi / bias1) / (np.sqrt(vi / bias2) + eps)
        param[i] -= lr * (update + weight_decay * param[i])
