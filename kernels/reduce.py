"""Reductions over gradient segments, each over one parameter slice [start, stop)."""

from .jit import kernel


@kernel
def sum_segments(out, segments, rows, start, stop, accumulate):
    # out[start:stop] (+)= sum over r in rows of segments[r, start:stop]; segments (S,N).
    # Returns the sum of squares of the result slice (for the global gradient norm).
    if not accumulate:
        for i in range(start, stop):
            out[i] = 0.0
    for r in rows:
        seg = segments[r]
        for i in range(start, stop):
            out[i] += seg[i]
    total = 0.0
    for i in range(start, stop):
        total += float(out[i]) * float(out[i])
    return total


@kernel
def sum_squares(x, start, stop):
    # sum of x[start:stop]**2, accumulated in float64
    total = 0.0
    for i in range(start, stop):
        total += float(x[i]) * float(x[i])
    return total
