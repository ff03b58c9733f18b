"""CLLM against PyTorch on this machine: training tokens/s, MFU, kernel speeds, memory, compile time.

    python benchmarks/peers.py                  # everything, both configurations (about 15 minutes on 2 cores)
    python benchmarks/peers.py --skip-torch     # CLLM only

Every figure comes from this run, each training measurement in its own process (so peak
memory is its own), CLLM and PyTorch alternating:

- the numpy sgemm peak (2048^3, float32) on 1 and 2 threads;
- per configuration and thread count, training tokens/s of CLLM (Node Zero, real data) in fp32,
  and in bf16 where the CPU has bfloat16 products (``--precision bf16``), and of PyTorch 2.x fp32
  eager (benchmarks/torch_gpt.py, SDPA attention, same step: forward, backward, clip, AdamW),
  the ratios, MFU = FLOPs per token x tokens/s / sgemm peak (fp32), peak RSS;
- the share of each kernel in one worker's forward_backward;
- ns per element of the element-wise and reduction kernels against a memory-bandwidth bound
  (a copy of the same bytes) and PyTorch's kernels on one thread (the softmax row is one tile
  step of the attention's online softmax over rows of TK scores, against torch.softmax);
- peak memory of a training step at growing context (attention is linear in T);
- the seconds before the first step with an empty numba cache, and with a warm one (fp32, and bf16).
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {  # name: (embed, layers, heads, seq, batch), vocabulary 8192
    "A": (256, 4, 8, 128, 32),
    "B": (384, 6, 6, 256, 16),
}
VOCAB = 8192


def flops_per_token(C: int, L: int, T: int, V: int) -> float:
    """Training FLOPs per token: 6 x (matrix parameters incl. the head) + causal attention 6 L C (T+1)."""
    return 6.0 * (L * 12 * C * C + V * C) + 6.0 * L * C * (T + 1)


FLOP_FORMULA = "6*(12*L*C^2 + V*C) + 6*L*C*(T+1)  [weights incl. the tied head, fwd+bwd; causal attention]"


def best_time(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


# ----- measurements, each run in a child process -----

def sgemm_peak() -> dict:
    import numpy as np
    from threadpoolctl import threadpool_limits

    n = 2048
    a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
    flop = 2.0 * n ** 3
    with threadpool_limits(1, "blas"):
        c = np.empty((n, n), np.float32)
        one = flop / best_time(lambda: np.matmul(a, b, out=c), 5) / 1e9
        outs = [np.empty((n, n), np.float32) for _ in range(2)]

        def pair():  # two pool threads, one BLAS thread each: how CLLM's workers use the cores
            threads = [threading.Thread(target=lambda o=o: [np.matmul(a, b, out=o) for _ in range(3)]) for o in outs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        two_pool = 6 * flop / best_time(pair, 3) / 1e9
    with threadpool_limits(2, "blas"):
        two_blas = flop / best_time(lambda: np.matmul(a, b, out=c), 5) / 1e9
    return {"1": one, "2": max(two_pool, two_blas), "2_pool": two_pool, "2_blas": two_blas}


def train_cllm(name: str, threads: int, steps: int, precision: str = "fp32") -> dict:
    sys.path.insert(0, str(HERE))
    import train_speed

    C, L, H, T, B = CONFIGS[name]
    args = train_speed.parse_args(["--embed-dim", str(C), "--num-layers", str(L), "--num-heads", str(H),
                                   "--seq-len", str(T), "--batch-size", str(B), "--vocab-size", str(VOCAB),
                                   "--steps", str(steps), "--warmup", "2", "--threads", str(threads),
                                   "--precision", precision])
    row = train_speed.measure(args)
    return {"tokens_per_s": row["tokens_per_s"], "peak_rss_mib": row["peak_rss_mib"], "vocab": row["vocab_size"]}


def train_torch(name: str, threads: int, steps: int) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from torch_gpt import TorchGPT

    C, L, H, T, B = CONFIGS[name]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = TorchGPT(VOCAB, T, L, H, C)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    batches = [(torch.randint(0, VOCAB, (B, T)), torch.randint(0, VOCAB, (B, T))) for _ in range(steps + 2)]
    for x, y in batches[:2]:
        model.train_step(opt, x, y)
    start = time.perf_counter()
    for x, y in batches[2:]:
        model.train_step(opt, x, y)
    seconds = time.perf_counter() - start
    return {"tokens_per_s": steps * B * T / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def kernel_shares(name: str) -> dict:
    """Seconds per kernel in one worker's forward_backward of half the batch (one of 2 workers)."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    import cllm.kernels.crossentropy as ce
    import cllm.kernels.model as model
    from cllm.kernels.gelu import ACTIVATIONS

    C, L, H, T, B = CONFIGS[name]
    cfg = model.GPTConfig(vocab_size=VOCAB, block_size=T, n_layer=L, n_head=H, n_embd=C)
    layout = model.ParamLayout(cfg)
    params, grad = model.init_params(cfg, seed=0), np.zeros(layout.size, np.float32)
    rows = B // 2
    acts = model.Activations(cfg, rows, T)
    rng = np.random.default_rng(0)
    tokens, targets = (rng.integers(0, VOCAB, size=(rows, T)).astype(np.int32) for _ in range(2))
    spent = {}

    def timed(label, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - start
            return out
        return wrapper

    labels = {"encoder_forward": "embedding", "encoder_backward": "embedding",
              "layernorm_forward": "layernorm", "layernorm_backward": "layernorm",
              "linear_forward": "matmul (+bias, residual)",
              "linear_backward": "matmul (+bias, residual)", "residual_branch": "matmul (+bias, residual)",
              "attention_forward": "attention", "attention_backward": "attention"}
    for attr, label in labels.items():
        setattr(model, attr, timed(label, getattr(model, attr)))
    head_products = timed("head matmuls", acts.mm)  # the head's products, apart from the linear layers'
    head_products.operand = acts.mm.operand
    head_loss_backward = model.head_loss_backward
    model.head_loss_backward = lambda *args: head_loss_backward(*args[:-1], head_products)
    ce.crossentropy_forward_backward = timed("cross-entropy", ce.crossentropy_forward_backward)
    fwd, bwd = ACTIVATIONS[cfg.activation]
    ACTIVATIONS[cfg.activation] = (timed("gelu", fwd), timed("gelu", bwd))
    w, g = layout.tensors(params), layout.tensors(grad)
    with threadpool_limits(1, "blas"):
        model.forward_backward(w, g, acts, tokens, targets, 1.0)
        spent.clear()
        start = time.perf_counter()
        for _ in range(3):
            model.forward_backward(w, g, acts, tokens, targets, 1.0)
        total = time.perf_counter() - start
    spent["other (Python, copies)"] = total - sum(spent.values())
    return {"total_s": total / 3, "shares": {k: v / total for k, v in spent.items()}}


def elementwise() -> dict:
    """ns per element of each kernel at config A's per-worker sizes, a copy bound, and torch's."""
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from cllm.kernels.attention import TK, online_softmax
    from cllm.kernels.crossentropy import CHUNK_ROWS, crossentropy_forward_backward
    from cllm.kernels.gelu import gelu_backward, gelu_forward
    from cllm.kernels.layernorm import layernorm_backward, layernorm_forward
    from cllm.kernels.optim import adamw_update

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    N, C = 16 * 128, 256
    f32 = np.float32

    def bound(n_bytes):  # ns per element of moving these bytes at the copy speed of this size
        src, dst = np.ones(n_bytes // 8, f32), np.empty(n_bytes // 8, f32)
        return best_time(lambda: np.copyto(dst, src), 10) * 1e9

    out = {}
    x = rng.normal(size=N * 4 * C).astype(f32)
    y, g = np.empty_like(x), rng.normal(size=x.size).astype(f32)
    tx, tg = torch.from_numpy(x), torch.from_numpy(g)
    n = x.size
    out["gelu forward"] = (best_time(lambda: gelu_forward(y, x), 10) * 1e9 / n, bound(8 * n) / n,
                           best_time(lambda: torch.nn.functional.gelu(tx, approximate="tanh"), 10) * 1e9 / n)
    out["gelu backward (in place)"] = (best_time(lambda: gelu_backward(g, x), 10) * 1e9 / n, bound(12 * n) / n,
                            best_time(lambda: torch.ops.aten.gelu_backward(tg, tx, approximate="tanh"), 10) * 1e9 / n)
    X = rng.normal(size=(N, C)).astype(f32)
    Y, dX, m, r = np.empty_like(X), np.zeros_like(X), np.empty(N, f32), np.empty(N, f32)
    wgt, bias = np.ones(C, f32), np.zeros(C, f32)
    tX = torch.from_numpy(X)
    n = X.size
    out["layernorm forward"] = (best_time(lambda: layernorm_forward(Y, m, r, X, wgt, bias, 1e-5), 10) * 1e9 / n,
                                bound(8 * n) / n,
                                best_time(lambda: torch.nn.functional.layer_norm(tX, (C,)), 10) * 1e9 / n)
    out["layernorm backward"] = (best_time(lambda: layernorm_backward(dX, wgt.copy(), bias.copy(), X, X, wgt, m, r),
                                           10) * 1e9 / n, bound(16 * n) / n, float("nan"))
    logits = rng.normal(size=(CHUNK_ROWS, VOCAB)).astype(f32)
    work, targets = np.empty_like(logits), rng.integers(0, VOCAB, CHUNK_ROWS).astype(np.int32)
    tl, tt = torch.from_numpy(logits), torch.from_numpy(targets.astype(np.int64))

    def ours():
        np.copyto(work, logits)
        crossentropy_forward_backward(work, targets, 1.0)

    def copy_only():
        np.copyto(work, logits)

    def theirs():
        tl.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(tl, tt, reduction="sum")
        torch.autograd.grad(loss, tl)

    n = logits.size
    out["cross-entropy (loss+gradient)"] = ((best_time(ours, 10) - best_time(copy_only, 10)) * 1e9 / n,
                                            bound(8 * n) / n, best_time(theirs, 10) * 1e9 / n)
    # the attention's softmax: every query row of a worker's heads (16 x 8 x 128) against one tile of TK keys,
    # all visible, from an empty running state: max, exp(score - max) in place, running sum, output rescale factor
    scores = rng.normal(size=(16 * 8 * 128, TK)).astype(f32)
    rows = scores.shape[0]
    m, l, alpha, new_max = (np.empty(rows, f32) for _ in range(4))
    tile, ts = np.empty_like(scores), torch.from_numpy(scores)

    def softmax_ours():
        np.copyto(tile, scores)
        m.fill(-np.inf)
        l.fill(0.0)
        online_softmax(tile, m, l, alpha, new_max, rows, TK, TK)

    def softmax_copy():
        np.copyto(tile, scores)
        m.fill(-np.inf)
        l.fill(0.0)

    n = scores.size
    out["softmax (attention, online)"] = ((best_time(softmax_ours, 10) - best_time(softmax_copy, 10)) * 1e9 / n,
                                          bound(8 * n) / n, best_time(lambda: torch.softmax(ts, -1), 10) * 1e9 / n)
    p = rng.normal(size=5_289_472).astype(f32)
    grad, m1, m2 = rng.normal(size=p.size).astype(f32), np.zeros_like(p), np.zeros_like(p)
    tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
    tp.grad = torch.from_numpy(grad)
    opt = torch.optim.AdamW([tp], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    n = p.size
    out["adamw"] = (best_time(lambda: adamw_update(p, grad, m1, m2, 1e-3, 0.9, 0.95, 1e-8, 0.1, 3, 1.0), 5) * 1e9 / n,
                    bound(28 * n) / n, best_time(opt.step, 5) * 1e9 / n)
    return out


def context_memory(T: int) -> dict:
    """Peak RSS of config B's model training one 4-row micro-batch at context T, and the step time."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from cllm.kernels.model import Activations, GPTConfig, ParamLayout, activation_bytes, forward_backward, init_params

    C, L, H, _, _ = CONFIGS["B"]
    cfg = GPTConfig(vocab_size=VOCAB, block_size=T, n_layer=L, n_head=H, n_embd=C)
    layout = ParamLayout(cfg)
    params, grad = init_params(cfg, seed=0), np.zeros(layout.size, np.float32)
    rows = 4
    acts = Activations(cfg, rows, T)
    rng = np.random.default_rng(0)
    tokens, targets = (rng.integers(0, VOCAB, size=(rows, T)).astype(np.int32) for _ in range(2))
    with threadpool_limits(1, "blas"):
        forward_backward(layout.tensors(params), layout.tensors(grad), acts, tokens, targets, 1.0)
        start = time.perf_counter()
        forward_backward(layout.tensors(params), layout.tensors(grad), acts, tokens, targets, 1.0)
        seconds = time.perf_counter() - start
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "activations_mib": activation_bytes(cfg, rows, T) / 2**20, "step_s": seconds}


def first_step(precision: str = "fp32") -> dict:
    """Import, compile (or load from the cache) and run one forward_backward and AdamW update of config A."""
    import numpy as np

    from cllm.kernels.model import Activations, GPTConfig, ParamLayout, forward_backward, init_params
    from cllm.kernels.optim import adamw_update
    from cllm.kernels.precision import Weights16

    C, L, H, T, B = CONFIGS["A"]
    cfg = GPTConfig(vocab_size=VOCAB, block_size=T, n_layer=L, n_head=H, n_embd=C)
    layout = ParamLayout(cfg)
    params, grad = init_params(cfg, seed=0), np.zeros(layout.size, np.float32)
    weights = layout.tensors(params)
    if precision == "bf16":
        rounded = Weights16(layout)
        rounded.refresh(params)
        weights = rounded.tensors(weights)
    rng = np.random.default_rng(0)
    tokens, targets = (rng.integers(0, VOCAB, size=(B // 2, T)).astype(np.int32) for _ in range(2))
    forward_backward(weights, layout.tensors(grad), Activations(cfg, B // 2, T, precision=precision), tokens, targets,
                     1.0)
    adamw_update(params, grad, np.zeros_like(params), np.zeros_like(params), 1e-3, 0.9, 0.95, 1e-8, 0.0, 1, 1.0)
    return {}


MEASURES = {"sgemm": sgemm_peak, "cllm": train_cllm, "torch": train_torch, "shares": kernel_shares,
            "elementwise": elementwise, "context": context_memory, "first_step": first_step}


def child(kind: str, *args, env=None) -> dict:
    cmd = [sys.executable, __file__, "--one", kind, *map(str, args)]
    started = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=6, help="measured training steps after 2 warm-up steps")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        kind, *rest = args.one
        rest = [int(x) if x.isdigit() else x for x in rest]
        print(json.dumps(MEASURES[kind](*rest)))
        return 0

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
    peak = child("sgemm")
    print(f"numpy sgemm peak (2048^3 float32): 1 thread {peak['1']:.1f} GFLOP/s; 2 threads {peak['2']:.1f} GFLOP/s "
          f"(two pool threads {peak['2_pool']:.1f}, one 2-thread BLAS call {peak['2_blas']:.1f})")
    print(f"FLOPs per token: {FLOP_FORMULA}")
    from cllm.kernels.precision import backend, unavailable

    bf16 = unavailable() is None
    print(f"bf16 products: {backend() if bf16 else 'none, ' + unavailable()}")
    for name in args.configs:
        C, L, H, T, B = CONFIGS[name]
        fpt = flops_per_token(C, L, T, VOCAB)
        print(f"\nconfiguration {name}: embed {C}, layers {L}, heads {H}, seq {T}, batch {B}, vocab {VOCAB}; "
              f"{fpt / 1e6:.1f} MFLOP per token; {args.steps} steps after 2 warm-up")
        print(f"{'threads':>7} {'CLLM tok/s':>11} {'bf16 tok/s':>11} {'torch tok/s':>12} {'ratio':>6} {'bf16 ratio':>11} "
              f"{'CLLM MFU':>9} {'torch MFU':>10} {'CLLM MiB':>9} {'torch MiB':>10}")
        for threads in args.threads:
            ours = child("cllm", name, threads, args.steps)
            low = child("cllm", name, threads, args.steps, "bf16") if bf16 else None
            theirs = None if args.skip_torch else child("torch", name, threads, args.steps)
            gflop = peak[str(min(threads, 2))] * 1e9
            mfu = ours["tokens_per_s"] * fpt / gflop
            cells = [f"{threads:>7}", f"{ours['tokens_per_s']:>11.0f}",
                     f"{low['tokens_per_s']:>11.0f}" if low else f"{'-':>11}"]
            if theirs:
                cells += [f"{theirs['tokens_per_s']:>12.0f}", f"{ours['tokens_per_s'] / theirs['tokens_per_s']:>6.2f}",
                          f"{low['tokens_per_s'] / theirs['tokens_per_s']:>11.2f}" if low else f"{'-':>11}",
                          f"{100 * mfu:>8.1f}%", f"{100 * theirs['tokens_per_s'] * fpt / gflop:>9.1f}%",
                          f"{ours['peak_rss_mib']:>9.0f}", f"{theirs['peak_rss_mib']:>10.0f}"]
            else:
                cells += [f"{'-':>12}", f"{'-':>6}", f"{'-':>11}", f"{100 * mfu:>8.1f}%", f"{'-':>10}",
                          f"{ours['peak_rss_mib']:>9.0f}", f"{'-':>10}"]
            print(" ".join(cells), flush=True)
        shares = child("shares", name)
        print(f"kernel shares of one worker's forward_backward ({B // 2} rows, 1 thread, "
              f"{shares['total_s'] * 1e3:.0f} ms): " + ", ".join(
                  f"{k} {100 * v:.1f}%" for k, v in sorted(shares["shares"].items(), key=lambda kv: -kv[1])))
    if not args.skip_torch:
        print("\nelement-wise and reduction kernels, 1 thread, config A worker sizes (ns per element):")
        print(f"{'kernel':>30} {'CLLM':>7} {'copy bound':>11} {'/ bound':>8} {'torch':>7}")
        rows = child("elementwise")
        del rows["wall_s"]
        for kernel, (ours, bound, theirs) in rows.items():
            print(f"{kernel:>30} {ours:>7.2f} {bound:>11.2f} {ours / bound:>8.1f} {theirs:>7.2f}")
    print("\nmemory of one training step of configuration B's model, 4 rows, 1 thread:")
    print(f"{'context':>7} {'peak RSS MiB':>13} {'activations MiB':>16} {'step s':>7}")
    for T in (256, 1024, 2048):
        row = child("context", T)
        print(f"{T:>7} {row['peak_rss_mib']:>13.0f} {row['activations_mib']:>16.0f} {row['step_s']:>7.2f}")
    for precision in ("fp32", "bf16") if bf16 else ("fp32",):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            cold = child("first_step", precision, env=env)["wall_s"]
            warm = child("first_step", precision, env=env)["wall_s"]
        print(f"\nnumba, {precision}: process start to the end of a first forward_backward and AdamW update (config A, "
              f"16 rows) took {cold:.1f} s with an empty cache, {warm:.1f} s with a warm one")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
