"""Softmax cross-entropy over the vocabulary."""

import numpy as np

from .jit import kernel


@kernel
def row_max(row):
    # the largest entry of row (V,), for a numerically safe softmax
    mx = -np.inf
    for j in range(row.shape[0]):
        if row[j] > mx:
            mx = row[j]
    return mx


@kernel
def crossentropy_forward(logits, targets):
    # logits (N,V), targets (N,) -> sum over rows of -log softmax(logits)[target]
    N, V = logits.shape
    loss = 0.0
    for i in range(N):
        mx = row_max(logits[i])
        total = 0.0
        for j in range(V):
            total += np.exp(logits[i, j] - mx)
        loss += np.log(total) + mx - logits[i, targets[i]]
    return loss


@kernel
def crossentropy_forward_backward(logits, targets, dloss):
    # logits (N,V) in, dL/dlogits out (in place), where L = dloss * (sum of row losses).
    # Returns the sum of row losses.
    N, V = logits.shape
    loss = 0.0
    for i in range(N):
        mx = row_max(logits[i])
        tgt = targets[i]
        target_logit = logits[i, tgt]
        total = 0.0
        for j in range(V):
            e = np.exp(logits[i, j] - mx)
            logits[i, j] = e
            total += e
        loss += np.log(total) + mx - target_logit
        scale = dloss / total
        for j in range(V):
            logits[i, j] *= scale
        logits[i, tgt] -= dloss
    return loss
