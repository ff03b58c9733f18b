"""Reductions over gradient segments, split by parameter slices."""

from .jit import kernel


@kernel
def sum_segments(out, segments, rows, start, stop):
    # out[start:stop] = sum over r in rows of segments[r, start:stop]; segments (S,N)
    for i in range(start, stop):
        out[i] = 0.0
    for r in rows:
        seg = segments[r]
        for i in range(start, stop):
            out[i] += seg[i]


@kernel
def sum_squares(x, start, stop):
    # sum of x[start:stop]**2 in float64
    total = 0.0
    for i in range(start, stop):
        total += float(x[i]) * float(x[i])
    return total


@kernel
def scale(x, factor, start, stop):
    # x[start:stop] *= factor
    for i in range(start, stop):
        x[i] *= factor
