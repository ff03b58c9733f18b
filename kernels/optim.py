"""Optimizer updates over one contiguous slice of the flat parameter buffer.

Each update touches only its slice, so the pool can split one optimizer step across
threads by parameter ranges. ``grad_scale`` applies gradient clipping without a
separate pass over the gradient. ``step`` counts from 1.
"""

import numpy as np

from .jit import kernel


@kernel
def adamw_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, grad_scale):
    # AdamW: decoupled weight decay, param -= lr * (adam direction + weight_decay * param).
    # Scalars take the parameters' dtype, so float32 state is updated in float32 vectors.
    t = param.dtype.type
    b1, b2, c1, c2 = t(beta1), t(beta2), t(1.0 - beta1), t(1.0 - beta2)
    inv_bias1, inv_bias2 = t(1.0 / (1.0 - beta1 ** step)), t(1.0 / (1.0 - beta2 ** step))
    lr, eps, weight_decay, grad_scale = t(lr), t(eps), t(weight_decay), t(grad_scale)
    for i in range(param.shape[0]):
        g = grad[i] * grad_scale
        mi = b1 * m[i] + c1 * g
        vi = b2 * v[i] + c2 * g * g
        m[i] = mi
        v[i] = vi
        update = (mi * inv_bias1) / (np.sqrt(vi * inv_bias2) + eps)
        param[i] -= lr * (update + weight_decay * param[i])


@kernel
def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, grad_scale):
    # Adam with L2 regularisation: weight_decay * param is added to the gradient
    bias1 = 1.0 - beta1 ** step
    bias2 = 1.0 - beta2 ** step
    for i in range(param.shape[0]):
        g = grad[i] * grad_scale + weight_decay * param[i]
        mi = beta1 * m[i] + (1.0 - beta1) * g
        vi = beta2 * v[i] + (1.0 - beta2) * g * g
        m[i] = mi
        v[i] = vi
        param[i] -= lr * (mi / bias1) / (np.sqrt(vi / bias2) + eps)


@kernel
def sgd_update(param, grad, buf, lr, momentum, nesterov, weight_decay, step, grad_scale):
    # SGD with momentum (buffer starts as the first gradient) and optional Nesterov
    for i in range(param.shape[0]):
        g = grad[i] * grad_scale + weight_decay * param[i]
        if momentum != 0.0:
            b = g if step == 1 else momentum * buf[i] + g
            buf[i] = b
            g = g + momentum * b if nesterov else b
        param[i] -= lr * g
