"""Causal attention forward and backward on one thread: milliseconds and GFLOP/s per call.

    python benchmarks/attention_speed.py
    python benchmarks/attention_speed.py --shape 8 256 384 6 --repeat 20

FLOPs counted for causal attention, per call of one layer: forward 2*B*T*C*(T+1) (q.k and
p@v over the T(T+1)/2 visible pairs of each head), backward twice that (the model's
6*L*C*(T+1) per token, fwd+bwd). The backward does five products where this counts four:
it recomputes q.k rather than keep the probabilities. Each figure is the best of --repeat
calls (CPU time of the calling thread), so that a burst of other work on a shared machine
does not decide it. Shapes: B T C H.
"""

import argparse
import math
import os
import platform
import time

import numpy as np

from cllm.kernels.attention import attention_backward, attention_forward

SHAPES = ((8, 256, 384, 6), (16, 128, 256, 8), (2, 1024, 384, 6))


def best_of(fn, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return best


def measure(B: int, T: int, C: int, H: int, repeat: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    qkv = rng.normal(size=(B, T, 3 * C)).astype(np.float32)
    dout = rng.normal(size=(B, T, C)).astype(np.float32)
    out, lse, dqkv = np.zeros((B, T, C), np.float32), np.zeros((B, H, T), np.float32), np.zeros_like(qkv)
    scale = 1 / math.sqrt(C // H)

    def forward():
        attention_forward(out, lse, qkv, H, scale)

    def backward():
        attention_backward(dqkv, dout, qkv, out, lse, H, scale)

    forward(), backward()  # compile or load from the cache
    return best_of(forward, repeat), best_of(backward, repeat)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=4, action="append", metavar=("B", "T", "C", "H"))
    p.add_argument("--repeat", type=int, default=10)
    args = p.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; one thread; "
          f"FLOPs: forward 2*B*T*C*(T+1), backward 4*B*T*C*(T+1)")
    print(f"{'B':>3} {'T':>5} {'C':>4} {'H':>3} {'fwd ms':>8} {'GFLOP/s':>8} {'bwd ms':>8} {'GFLOP/s':>8} "
          f"{'total ms':>9} {'GFLOP/s':>8}")
    for B, T, C, H in args.shape or SHAPES:
        fwd, bwd = measure(B, T, C, H, args.repeat)
        flops = 2.0 * B * T * C * (T + 1)
        print(f"{B:>3} {T:>5} {C:>4} {H:>3} {fwd * 1e3:>8.2f} {flops / fwd / 1e9:>8.1f} {bwd * 1e3:>8.2f} "
              f"{2 * flops / bwd / 1e9:>8.1f} {(fwd + bwd) * 1e3:>9.2f} {3 * flops / (fwd + bwd) / 1e9:>8.1f}")


if __name__ == "__main__":
    main()
