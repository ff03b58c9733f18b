"""Training speed: tokens/s, peak memory and Node Zero's overhead for one configuration.

Each thread count runs in its own process (so peak memory is its own) on the same data
and model; the figures are printed as one table with the speed-up over the first count.

    python benchmarks/train_speed.py --threads 1 2 --steps 20

Node Zero's overhead is the share of a step's wall time outside the step's critical path
in kernels (the slowest worker's forward/backward, then the reduction and the update).
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHAKESPEARE)
    p.add_argument("--tokenizer", choices=("char", "bpe"), default="bpe")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--embed-dim", type=int, default=256)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--num-heads", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="measured steps, after --warmup unmeasured ones")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="of the matrix products")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "cllm")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def measure(args) -> dict:
    """Run in a child process: train ``args.steps`` steps with ``args.threads[0]`` workers."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from cllm.coord.data.dataset import prepare_dataset
    from cllm.coord.logs import configure
    from cllm.coord.nodezero.node_zero import NodeZero
    from cllm.coord.training.optimizer import Optimizer, OptimizerConfig
    from cllm.coord.training.trainer import run_event_loop
    from cllm.kernels.model import GPTConfig, ParamLayout, init_params

    configure("json", "warning", stream=sys.stderr)
    dataset = prepare_dataset(args.data, args.tokenizer, args.vocab_size, args.cache_dir)
    cfg = GPTConfig(vocab_size=dataset.tokenizer.vocab_size, block_size=args.seq_len, n_layer=args.num_layers,
                    n_head=args.num_heads, n_embd=args.embed_dim)
    params = init_params(cfg, seed=0)
    node = NodeZero(cfg, params, Optimizer(ParamLayout(cfg), OptimizerConfig()), args.threads[0],
                    precision=args.precision)

    async def run():
        results = []
        await node.start()
        try:
            for step in range(1, args.warmup + args.steps + 1):
                x, y = dataset.train_batch(step - 1, args.batch_size, args.seq_len, 0)
                result = await node.step(step, [(x, y)], 1e-3, 1.0)
                if step > args.warmup:
                    results.append(result)
        finally:
            await node.close()
        return results

    with threadpool_limits(1, user_api="blas"):
        started = time.perf_counter()
        results = run_event_loop(run())
    seconds = sum(r.seconds for r in results)
    kernel = sum(r.kernel_seconds for r in results)
    return {
        "threads": args.threads[0],
        "precision": node.precision,  # fp32 when bf16 was asked for but cannot run here
        "tokens_per_s": sum(r.tokens for r in results) / seconds,
        "step_s": seconds / len(results),
        "overhead_share": (seconds - kernel) / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss_first": results[0].loss,
        "loss_last": results[-1].loss,
        "wall_s": time.perf_counter() - started,
        "parameters": int(params.size),
        "vocab_size": cfg.vocab_size,
        "finite": bool(np.isfinite(params).all()),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure(args)))
        return 0
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    print(f"config: embed {args.embed_dim}, layers {args.num_layers}, heads {args.num_heads}, seq {args.seq_len}, "
          f"batch {args.batch_size}, {args.tokenizer} vocab {args.vocab_size}, {args.steps} steps after "
          f"{args.warmup} warm-up, data {args.data.name}, precision {args.precision}")
    rows = []
    for threads in args.threads:
        base = [a for a in (argv if argv is not None else sys.argv[1:])]
        cmd = [sys.executable, __file__, *strip_threads(base), "--threads", str(threads), "--one"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"parameters: {rows[0]['parameters']:,}, vocabulary: {rows[0]['vocab_size']}")
    print(f"{'threads':>7} {'tokens/s':>10} {'step s':>8} {'speed-up':>8} {'overhead':>9} {'peak MiB':>9} "
          f"{'loss':>15}")
    for row in rows:
        print(f"{row['threads']:>7} {row['tokens_per_s']:>10.0f} {row['step_s']:>8.3f} "
              f"{row['tokens_per_s'] / rows[0]['tokens_per_s']:>8.2f} {100 * row['overhead_share']:>8.2f}% "
              f"{row['peak_rss_mib']:>9.0f} {row['loss_first']:>7.3f}->{row['loss_last']:.3f}")
    return 0


def strip_threads(argv: list) -> list:
    """``argv`` without its --threads values."""
    out, skipping = [], False
    for item in argv:
        if item == "--threads":
            skipping = True
            continue
        if skipping and not item.startswith("--"):
            continue
        skipping = False
        out.append(item)
    return out


if __name__ == "__main__":
    sys.exit(main())
