"""Softmax cross-entropy over the vocabulary, fused with the output head.

The (N,V) logits never exist at once: the head runs over chunks of CHUNK_ROWS rows into one
(CHUNK_ROWS,V) buffer, each row's logits become its loss and its gradient in place while
the row is in cache (max, exponentiate and sum, scale: no second V-wide buffer), and the
chunk's gradient goes straight through the head's two backward products, the head's
gradient added up chunk by chunk (BLAS beta = 1).
"""

import numpy as np

from .jit import kernel
from .precision import FIRST, FLOAT32, SECOND
from .vecmath import LOG2E, exp2, maxnum

# exp(x - mx) = 2**(x * log2e + shift), shift = -mx * log2e: one fused multiply-add per entry.
# The rounding of shift scales every entry of the row alike, so it cancels in the softmax; the
# loss takes back the shift actually used, in float64: log(total) - shift / log2e.

CHUNK_ROWS = 256


@kernel
def row_max(row):
    # the largest entry of row (V,), for a numerically safe softmax. A NaN is passed over here
    # (maxnum, which vectorises); it still makes the row's loss NaN through its exponential
    mx = row[0]
    for j in range(1, row.shape[0]):
        mx = maxnum(mx, row[j])
    return mx


@kernel
def crossentropy_forward(logits, targets):
    # logits (N,V), targets (N,) -> (sum over rows of -log softmax(logits)[target], rows whose
    # target has the largest logit: the predictions a greedy choice gets right, ties counted right)
    N, V = logits.shape
    t = logits.dtype.type
    log2e = t(LOG2E)
    loss = 0.0
    hits = 0
    for i in range(N):
        row = logits[i]
        mx = row_max(row)
        shift = -mx * log2e
        total = t(0.0)
        for j in range(V):
            total += exp2(row[j] * log2e + shift)
        loss += np.log(total) - np.float64(shift) / np.float64(log2e) - row[targets[i]]
        if row[targets[i]] >= mx:
            hits += 1
    return loss, hits


@kernel
def crossentropy_forward_backward(logits, targets, dloss):
    # logits (N,V) in, dL/dlogits out (in place), where L = dloss * (sum of row losses).
    # Returns the sum of row losses.
    N, V = logits.shape
    t = logits.dtype.type
    d, log2e = t(dloss), t(LOG2E)
    loss = 0.0
    for i in range(N):
        row = logits[i]
        mx = row_max(row)
        tgt = targets[i]
        target_logit = row[tgt]
        shift = -mx * log2e
        total = t(0.0)
        for j in range(V):
            e = exp2(row[j] * log2e + shift)
            row[j] = e
            total += e
        loss += np.log(total) - np.float64(shift) / np.float64(log2e) - target_logit
        scale = d / total
        for j in range(V):
            row[j] *= scale
        row[tgt] -= d
    return loss


def head_loss(x: np.ndarray, head: np.ndarray, targets: np.ndarray, chunk: np.ndarray, mm=FLOAT32) -> tuple:
    """(summed cross-entropy, rows predicted right) of the logits x (N,C) @ head (V,C).T; ``chunk`` (R,V)
    is scratch."""
    total, hits = 0.0, 0
    R = chunk.shape[0]
    for a in range(0, x.shape[0], R):
        logits = chunk[:min(R, x.shape[0] - a)]
        mm(logits, x[a:a + R], head.T)
        loss, right = crossentropy_forward(logits, targets[a:a + R])
        total, hits = total + loss, hits + right
    return float(total), int(hits)


def head_loss_backward(x: np.ndarray, head: np.ndarray, targets: np.ndarray, dloss: float, dx: np.ndarray,
                       dhead: np.ndarray, chunk: np.ndarray, mm=FLOAT32) -> float:
    """Summed cross-entropy of x (N,C) @ head (V,C).T; overwrites dx (N,C) and dhead (V,C) with
    the gradients of dloss * that sum. ``chunk`` (R,V) is scratch."""
    total = 0.0
    R = chunk.shape[0]
    for a in range(0, x.shape[0], R):
        logits = chunk[:min(R, x.shape[0] - a)]
        rows = mm.operand(x[a:a + R], SECOND)  # rounded once for the logits and the head's gradient
        mm(logits, rows, head.T)
        total += crossentropy_forward_backward(logits, targets[a:a + R], dloss)
        dlogits = mm.operand(logits, FIRST)
        mm(dx[a:a + R], dlogits, head)
        mm(dhead, dlogits.T, rows, a > 0)
    return float(total)
