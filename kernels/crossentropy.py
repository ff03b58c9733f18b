"""Softmax cross-entropy over the vocabulary, fused with the output head.

The (N,V) logits never exist at once: the head runs over chunks of CHUNK_ROWS rows into one
(CHUNK_ROWS,V) buffer, each row's logits become its loss and its gradient in place while
the row is in cache (exponentiate and sum, scale: no second V-wide buffer), and the chunk's
gradient goes straight through the head's two backward products, the head's gradient added
up chunk by chunk (BLAS beta = 1).

A softmax is safe from overflow when its exponentials are taken relative to the row's
maximum, but finding the maximum is one more pass over the row. The fused kernel takes them
relative to the target's logit instead, which is never above the maximum, so nothing can
underflow that the maximum would have kept, and it checks each BLOCK of the row as it goes: a
block whose exponentials sum above SUM_LIMIT (an entry overflowed, or the block holds an inf
or a NaN) is put back from the copy of its logits kept aside and redone relative to its own
maximum, the blocks before it rescaled to match. So the row is read once, and the result is
the maximum's to float32 rounding for huge, infinite or NaN logits too.
"""

import numpy as np

from .jit import kernel
from .precision import FIRST, FLOAT32, SECOND
from .vecmath import LOG2E, exp2, exp2_normal, maxnum

# exp(x - c) = 2**(x * log2e + shift), shift = -c * log2e for a centre c (the row's maximum, or the
# target's logit): one fused multiply-add per entry. The rounding of shift scales every entry of the
# row alike, so it cancels in the softmax; the loss takes back the shift actually used, in float64:
# log(total) - shift / log2e - (the target's logit). That rounding grows with the logits, up to the
# exponent's whole range, so beyond |shift| = SHIFT_LIMIT the exponent is (x - c) * log2e instead,
# exact near c, and the shift taken back -c * log2e.

CHUNK_ROWS = 256
BLOCK = 1024  # entries exponentiated before their sum is checked; their logits are kept aside meanwhile
SUM_LIMIT = np.float32(2.0 ** 100)  # no entry of a block under it overflowed, nor can the row's total
SHIFT_LIMIT = np.float32(2.0 ** 22)  # below it, shift's rounding is at most a quarter


@kernel
def row_max(row):
    # the largest entry of row (V,), for a numerically safe softmax. A NaN is passed over here
    # (maxnum, which vectorises); it still makes the row's loss NaN through its exponential
    mx = row[0]
    for j in range(1, row.shape[0]):
        mx = maxnum(mx, row[j])
    return mx


@kernel
def exponent_shift(centre, log2e):
    # the shift, in float64, of exponentiate's entries 2**(logit * log2e + shift) about centre
    shift = -centre * log2e
    return np.float64(shift) if abs(shift) < SHIFT_LIMIT else -np.float64(centre) * np.float64(log2e)


@kernel
def exponentiate(block, kept, log2e, centre):
    # block (n,) of logits -> 2**(logit * log2e + exponent_shift(centre)) in place, about exp(logit -
    # centre); returns their sum. The logits are copied to kept (n,) first
    total = block.dtype.type(0.0)
    shift = -centre * log2e
    if abs(shift) < SHIFT_LIMIT:
        for j in range(block.shape[0]):
            x = block[j]
            kept[j] = x
            e = exp2_normal(x * log2e + shift)
            block[j] = e
            total += e
    else:  # also a NaN or infinite centre
        for j in range(block.shape[0]):
            x = block[j]
            kept[j] = x
            e = exp2_normal((x - centre) * log2e)
            block[j] = e
            total += e
    return total


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
        if abs(shift) < SHIFT_LIMIT:
            for j in range(V):
                total += exp2(row[j] * log2e + shift)
        else:
            for j in range(V):
                total += exp2((row[j] - mx) * log2e)
        loss += np.log(total) - exponent_shift(mx, log2e) / np.float64(log2e) - row[targets[i]]
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
    kept = np.empty(min(BLOCK, V), logits.dtype)
    loss = 0.0
    for i in range(N):
        row = logits[i]
        tgt = targets[i]
        target_logit = row[tgt]
        centre = target_logit
        total = t(0.0)
        for a in range(0, V, BLOCK):
            block = row[a:a + BLOCK]
            aside = kept[:block.shape[0]]
            part = exponentiate(block, aside, log2e, centre)
            if not part <= SUM_LIMIT:
                block[:] = aside
                redone = row_max(block)
                if redone > centre:  # the blocks before move to the new centre, in float64 so that none underflows early
                    rescale = np.exp2(exponent_shift(redone, log2e) - exponent_shift(centre, log2e))
                    for j in range(a):
                        row[j] = row[j] * rescale
                    total, centre = t(total * rescale), redone
                part = exponentiate(block, aside, log2e, centre)
            total += part
        loss += np.log(total) - exponent_shift(centre, log2e) / np.float64(log2e) - target_logit
        scale = t(np.float64(d) / np.float64(total))
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
