"""Work stealing against an even split, with one worker slowed.

Two workers, each pinned to a core of its own; a busy-loop process pinned to the second
worker's core takes about half of it. With one micro-batch per worker (the even split) every
step waits for the slowed worker's half of the batch; with more micro-batches than workers the
faster one asks for, and takes, more of them. Results are bitwise the same for the same
micro-batch count; the figures are steps/s and the slowed worker's share of micro-batches.

    flock /tmp/cllm-cpu.lock python benchmarks/work_stealing.py --steps 10
"""

import argparse
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHAKESPEARE)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="measured steps, after --warmup unmeasured ones")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--micro-batches", type=int, nargs="+", default=[2, 8, 16],
                   help="micro-batches per step to compare; 2 (one per worker) is the even split")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "cllm")
    return p.parse_args(argv)


def spin(core: int) -> None:
    os.sched_setaffinity(0, {core})
    while True:
        pass


def pinned_kernels(cores: list):
    """Worker i's kernels run on core cores[i]: the pool thread running them is pinned first."""
    from cllm.coord.nodezero.worker import WorkerKernels

    train = WorkerKernels.train
    every = os.sched_getaffinity(0)

    def on_its_core(self, *args):
        os.sched_setaffinity(0, {cores[self.index % len(cores)]})
        try:
            return train(self, *args)
        finally:
            os.sched_setaffinity(0, every)  # the thread's next task may be a sum or an update slice

    WorkerKernels.train = on_its_core


def measure(args, dataset, cfg, micro_batches: int) -> dict:
    import numpy as np

    from cllm.coord.nodezero.node_zero import NodeZero
    from cllm.coord.training.optimizer import Optimizer, OptimizerConfig
    from cllm.coord.training.trainer import run_event_loop
    from cllm.kernels.model import ParamLayout, init_params

    from train_speed import train_steps

    params = init_params(cfg, seed=0)
    node = NodeZero(cfg, params, Optimizer(ParamLayout(cfg), OptimizerConfig()), 2, micro_batches=micro_batches)
    results = run_event_loop(train_steps(node, dataset, args))
    seconds = sum(r.seconds for r in results)
    slowed = sum(r.taken.get(1, 0) for r in results)
    return {"micro_batches": micro_batches, "steps_per_s": len(results) / seconds,
            "slowed_share": slowed / sum(sum(r.taken.values()) for r in results),
            "overhead": (seconds - sum(r.kernel_seconds for r in results)) / seconds,
            "digest": hash(np.asarray(params).tobytes())}


def main(argv=None) -> int:
    args = parse_args(argv)
    from threadpoolctl import threadpool_limits

    from cllm.coord.data.dataset import prepare_dataset
    from cllm.coord.logs import configure
    from cllm.kernels.model import GPTConfig

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        print("needs two cores", file=sys.stderr)
        return 2
    configure("json", "warning", stream=sys.stderr)
    dataset = prepare_dataset(args.data, "char", 0, args.cache_dir)
    cfg = GPTConfig(vocab_size=dataset.tokenizer.vocab_size, block_size=args.seq_len, n_layer=args.num_layers,
                    n_head=args.num_heads, n_embd=args.embed_dim)
    pinned_kernels(cores[:2])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    print(f"config: embed {args.embed_dim}, layers {args.num_layers}, heads {args.num_heads}, seq {args.seq_len}, "
          f"batch {args.batch_size}, char vocab {cfg.vocab_size}, 2 workers pinned to cores {cores[:2]}, "
          f"{args.steps} steps after {args.warmup} warm-up")
    rows = []
    with threadpool_limits(1, user_api="blas"):
        for load in ("none", "busy loop"):
            spinner = None
            if load != "none":
                spinner = multiprocessing.Process(target=spin, args=(cores[1],), daemon=True)
                spinner.start()
                time.sleep(0.5)
            try:
                for count in args.micro_batches:
                    rows.append({"load": load, **measure(args, dataset, cfg, count)})
            finally:
                if spinner is not None:
                    spinner.terminate()
                    spinner.join()
    print(f"{'slowed worker':>14} {'micro-batches':>13} {'steps/s':>8} {'vs even':>8} {'slowed share':>13} "
          f"{'overhead':>9}")
    for row in rows:
        even = next(r for r in rows if r["load"] == row["load"] and r["micro_batches"] == args.micro_batches[0])
        print(f"{row['load']:>14} {row['micro_batches']:>13} {row['steps_per_s']:>8.3f} "
              f"{row['steps_per_s'] / even['steps_per_s']:>8.2f} {100 * row['slowed_share']:>12.1f}% "
              f"{100 * row['overhead']:>8.2f}%")
    same = all(r["digest"] == s["digest"] for r in rows for s in rows if r["micro_batches"] == s["micro_batches"])
    print(f"weights bitwise equal with and without the busy loop at each micro-batch count: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
