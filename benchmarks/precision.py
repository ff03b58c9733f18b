"""bfloat16 products against float32: training tokens/s, and the validation loss they reach.

    python benchmarks/precision.py                        # speed (about 10 minutes on 2 cores)
    python benchmarks/precision.py --validate 2000        # nanoGPT's shakespeare-char proof (many hours here)
    python benchmarks/precision.py --skip-speed --validate 100 --val-batch-size 16   # a reduced validation

Speed: the two configurations of benchmarks/peers.py (A: embed 256, 4 layers, 8 heads, seq 128,
batch 32; B: embed 384, 6 layers, 6 heads, seq 256, batch 16; BPE vocabulary 8192) at 1 and 2
threads, fp32 and bf16 alternating, each in its own process (benchmarks/train_speed.py), and
the products alone: numpy's sgemm and oneMKL's bfloat16 gemm on one thread at a worker's shapes.

Validation: `cllm train` on tinyshakespeare, character-level, nanoGPT's shakespeare-char model
(6 layers, 384 wide, 6 heads, block 256, dropout 0.2, AdamW lr 1e-3, beta2 0.99, weight decay 0.1),
warm-up over the first 5% of the steps (100 of 2,000) and a cosine decay to 1e-4 over the rest,
the same seed and data for both precisions; the validation loss each reaches after the steps,
on the same fixed validation batches, and the difference.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAKESPEARE = HERE.parents[1] / "shared" / "data" / "tinyshakespeare.txt"
CONFIGS = {"A": (256, 4, 8, 128, 32), "B": (384, 6, 6, 256, 16)}  # embed, layers, heads, seq, batch
NANOGPT = ["--tokenizer", "char", "--embed-dim", "384", "--num-layers", "6", "--num-heads", "6", "--seq-len", "256",
           "--dropout", "0.2", "--learning-rate", "1e-3", "--lr-schedule", "cosine", "--min-lr", "1e-4", "--beta2", "0.99", "--weight-decay", "0.1", "--clip-norm", "1.0"]


def machine() -> str:
    from cllm.kernels.precision import cpu_flags, read_cpuinfo, unavailable

    info = read_cpuinfo()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = ", ".join(sorted(cpu_flags(info))) or "none"
    return (f"machine: {model}, {os.cpu_count()} cores, bfloat16 flags: {flags}; python {platform.python_version()}; "
            f"bf16 here: {unavailable() or 'yes'}")


def products(shapes: list) -> list:
    """(M, K, N, sgemm GFLOP/s, bf16 GFLOP/s) on one thread, best of repeated calls."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from cllm.kernels.blas import gemm
    from cllm.kernels.precision import Products16

    rows = []
    with threadpool_limits(1, "blas"):
        for M, K, N in shapes:
            rng = np.random.default_rng(0)
            a, b = rng.standard_normal((M, K), np.float32), rng.standard_normal((K, N), np.float32)
            out = np.empty((M, N), np.float32)
            mm = Products16(M * K, K * N)
            a16, b16 = mm.operand(a, 0), mm.operand(b, 1)
            figures = []
            for fn in (lambda: gemm(out, a, b, False), lambda: mm(out, a16, b16)):
                fn()
                best = float("inf")
                deadline = time.perf_counter() + 1.0
                while time.perf_counter() < deadline:
                    start = time.perf_counter()
                    fn()
                    best = min(best, time.perf_counter() - start)
                figures.append(2.0 * M * K * N / best / 1e9)
            rows.append((M, K, N, *figures))
    return rows


def train_speed(name: str, threads: int, precision: str, steps: int) -> dict:
    C, L, H, T, B = CONFIGS[name]
    cmd = [sys.executable, str(HERE / "train_speed.py"), "--embed-dim", str(C), "--num-layers", str(L),
           "--num-heads", str(H), "--seq-len", str(T), "--batch-size", str(B), "--steps", str(steps),
           "--warmup", "2", "--threads", str(threads), "--precision", precision, "--one"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def validate(precision: str, steps: int, batch_size: int, eval_batches: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as run:
        cmd = [sys.executable, "-m", "cllm.coord", "train", str(SHAKESPEARE), *NANOGPT, "--batch-size",
               str(batch_size), "--steps", str(steps), "--warmup-steps", str(max(1, steps // 20)),
               "--eval-interval", "0", "--eval-batches", str(eval_batches),
               "--checkpoint-interval", "0", "--threads", str(threads), "--precision", precision,
               "--checkpoint-dir", str(Path(run) / "run"), "--log-format", "json", "--log-interval", "10"]
        started = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"cllm train --precision {precision} failed: {result.stderr.strip()[-500:]}")
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    finished = next(e for e in events if e["event"] == "train_finished")
    steps_logged = [e for e in events if e["event"] == "step"]
    used = "fp32" if any(e["event"] == "precision_fallback" for e in events) else precision
    return {"val_loss": finished["val_loss"], "train_loss": steps_logged[-1]["loss"], "seconds": seconds,
            "tokens_per_s": steps_logged[-1]["tokens_per_s"], "precision": used}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=6, help="measured training steps per speed figure")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--validate", type=int, default=0, metavar="STEPS", help="steps of the validation comparison")
    p.add_argument("--val-batch-size", type=int, default=64, help="nanoGPT's is 64 (default: %(default)s)")
    p.add_argument("--eval-batches", type=int, default=20, help="validation batches at the end")
    args = p.parse_args(argv)
    print(machine())
    if not args.skip_speed:
        shapes = []
        for C, L, H, T, B in CONFIGS.values():
            rows = B * T // 2  # one of two workers
            shapes += [(rows, C, 3 * C), (rows, C, 4 * C), (rows, 4 * C, C), (256, C, 8192)]
        print("products on one thread (M x K x N; GFLOP/s):")
        print(f"{'M':>6} {'K':>5} {'N':>5} {'sgemm':>7} {'bf16':>7} {'ratio':>6}")
        for M, K, N, fp32, bf16 in products(shapes):
            print(f"{M:>6} {K:>5} {N:>5} {fp32:>7.1f} {bf16:>7.1f} {bf16 / fp32:>6.2f}")
        print("training tokens/s (BPE vocabulary 8192, tinyshakespeare):")
        print(f"{'config':>6} {'threads':>7} {'fp32':>8} {'bf16':>8} {'bf16/fp32':>9} {'fp32 loss':>15} {'bf16 loss':>15}")
        for name in CONFIGS:
            for threads in args.threads:
                fp32 = train_speed(name, threads, "fp32", args.steps)
                bf16 = train_speed(name, threads, "bf16", args.steps)
                note = "" if bf16["precision"] == "bf16" else "  (bf16 fell back to fp32)"
                print(f"{name:>6} {threads:>7} {fp32['tokens_per_s']:>8.0f} {bf16['tokens_per_s']:>8.0f} "
                      f"{bf16['tokens_per_s'] / fp32['tokens_per_s']:>9.2f} "
                      f"{fp32['loss_first']:>7.3f}->{fp32['loss_last']:.3f} "
                      f"{bf16['loss_first']:>7.3f}->{bf16['loss_last']:.3f}{note}", flush=True)
    if args.validate:
        threads = max(args.threads)
        print(f"validation: nanoGPT shakespeare-char, {args.validate} steps of batch {args.val_batch_size} x 256, "
              f"{threads} threads, val loss over {args.eval_batches} batches")
        got = {precision: validate(precision, args.validate, args.val_batch_size, args.eval_batches, threads)
               for precision in ("fp32", "bf16")}
        for precision, row in got.items():
            print(f"  {precision} (ran {row['precision']}): val loss {row['val_loss']:.4f}, last train loss "
                  f"{row['train_loss']:.4f}, {row['tokens_per_s']:.0f} tokens/s, {row['seconds']:.0f} s")
        diff = got["bf16"]["val_loss"] - got["fp32"]["val_loss"]
        print(f"  bf16 - fp32 val loss: {diff:+.4f}")
        full = sum(2000 * 64 * 256 / row["tokens_per_s"] for row in got.values())
        print(f"  the full proof (2,000 steps of batch 64, both precisions) at these speeds: about {full / 3600:.1f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
