"""One run on this machine's cores as one process of N threads, or as N MPI ranks of one thread.

    flock /tmp/cllm-cpu.lock python benchmarks/mpi_speed.py            # 1 x 2 threads against 2 ranks x 1
    python benchmarks/mpi_speed.py --ranks 2 --steps 12 --warmup 2

Both are real `cllm train` runs of the same configuration (embed 256, layers 4, heads 8, seq
128, batch 32, BPE vocabulary 8192, on tinyshakespeare), each in its own processes, logging
every step. tokens/s is the measured steps' tokens over the wall time between the step events
that bound them (so it counts everything between steps too); the ranks' communication share
is each measured step's wait for the other rank and the gradient Allreduce (the step event's
communication_s, on rank 0) over its step time.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"
MODEL = ["--tokenizer", "bpe", "--vocab-size", "8192", "--embed-dim", "256", "--num-layers", "4", "--num-heads", "8",
         "--seq-len", "128", "--batch-size", "32"]
TOKENS_PER_STEP = 32 * 128


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHAKESPEARE)
    p.add_argument("--ranks", type=int, default=2, help="ranks of one thread, against one process of this many threads")
    p.add_argument("--steps", type=int, default=12, help="measured steps, after --warmup unmeasured ones")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "cllm")
    return p.parse_args(argv)


def mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else "mpiexec"


def train(args, run: Path, ranks: int) -> list:
    """The step events of one run: ``ranks`` ranks of one thread, or (ranks 1) one process of args.ranks threads."""
    threads = 1 if ranks > 1 else args.ranks
    command = [sys.executable, "-m", "cllm.coord", "train", args.data, *MODEL, "--threads", threads,
               "--steps", args.warmup + args.steps, "--log-interval", 1, "--eval-interval", 0, "--eval-batches", 1,
               "--checkpoint-interval", 0, "--checkpoint-dir", run, "--cache-dir", args.cache_dir, "--log-format",
               "json"]
    if ranks > 1:
        command = [mpiexec(), "-n", ranks, *command]
    done = subprocess.run(list(map(str, command)), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{done.stderr[-2000:]}")
    events = [json.loads(line[:line.rindex("}") + 1]) for line in done.stdout.splitlines() if line.startswith("{")]
    return [e for e in events if e["event"] == "step"]


def figures(steps: list, warmup: int) -> dict:
    """tokens/s between the last warm-up step's event and the last step's; the median step; communication."""
    first, measured = steps[warmup - 1], steps[warmup:]
    start, end = (datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) for e in (first, measured[-1]))
    out = {"tokens_per_s": len(measured) * TOKENS_PER_STEP / (end - start).total_seconds(),
           "step_s": statistics.median(e["step_s"] for e in measured)}
    if "communication_s" in measured[0]:
        out["communication_s"] = statistics.median(e["communication_s"] for e in measured)
        out["communication_share"] = (sum(e["communication_s"] for e in measured) /
                                      sum(e["step_s"] for e in measured))
    return out


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cllm-mpi-speed-") as tmp:
        alone = figures(train(args, Path(tmp) / "alone", 1), args.warmup)
        ranks = figures(train(args, Path(tmp) / "ranks", args.ranks), args.warmup)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; embed 256, layers 4, "
          f"heads 8, seq 128, batch 32, vocab 8192; {args.steps} measured steps after {args.warmup}")
    print(f"| run | tokens/s | median step | communication (median) | communication share |")
    print(f"|---|---|---|---|---|")
    print(f"| 1 process x {args.ranks} threads | {alone['tokens_per_s']:.0f} | {alone['step_s']:.3f} s | | |")
    print(f"| {args.ranks} ranks x 1 thread | {ranks['tokens_per_s']:.0f} | {ranks['step_s']:.3f} s | "
          f"{1e3 * ranks['communication_s']:.1f} ms | {100 * ranks['communication_share']:.2f}% |")
    print(f"{args.ranks} ranks reach {100 * ranks['tokens_per_s'] / alone['tokens_per_s']:.1f}% of one process's "
          "tokens/s")


if __name__ == "__main__":
    main()
