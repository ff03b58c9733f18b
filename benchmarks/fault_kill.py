"""Kill a run that checkpoints every step, at random instants, and resume it: does it always come back?

`cllm train` runs a tiny model on tinyshakespeare with --checkpoint-interval 1 and
--keep-checkpoints 2, so most of its time goes into writing checkpoints and pruning the
older ones. Each trial starts the run (the first new, every later one --resume), waits for
its first step, then after a random delay of up to --window seconds kills it: with SIGKILL,
or (--signal term) with SIGTERM followed by SIGKILL within 250 ms. After each kill it counts

- an unloadable latest checkpoint: the newest complete checkpoint of the run directory does
  not load (weights, tokenizer and training state);
- a kill inside a write or a prune: the kill left a scratch directory behind;

and the next trial counts a run that cannot resume: --resume does not reach a step.

    python benchmarks/fault_kill.py --trials 100 --signal kill
    python benchmarks/fault_kill.py --trials 100 --signal term
"""

import argparse
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cllm.coord.checkpoints.store import list_checkpoints, load_checkpoint, load_training_state
from cllm.coord.errors import UserError

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"
MODEL = ["--embed-dim", "32", "--num-layers", "2", "--num-heads", "2", "--seq-len", "32", "--batch-size", "8"]


def start(directory: Path, resume: bool) -> subprocess.Popen:
    run = directory / "run"
    what = ["--resume", str(run)] if resume else [str(directory / "corpus.txt"), *MODEL, "--checkpoint-interval", "1",
                                                   "--keep-checkpoints", "2", "--eval-interval", "0"]
    command = [sys.executable, "-m", "cllm.coord", "train", *what, "--steps", "10000000", "--threads", "2",
               "--checkpoint-dir", str(run), "--cache-dir", str(directory / "cache"), "--log-format", "json"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def first_step(process: subprocess.Popen, timeout: float) -> dict | None:
    """The first step event of ``process``, or None if it exits or logs none in time."""
    deadline = time.monotonic() + timeout
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.05)
        except queue.Empty:
            if process.poll() is not None and lines.empty():
                return None
            continue
        if line.startswith("{") and (event := json.loads(line))["event"] == "step":
            return event
    return None


def latest_loads(run: Path) -> tuple:
    """(whether the newest complete checkpoint loads, its step or None)."""
    found = list_checkpoints(run)
    if not found:
        return True, None
    try:
        checkpoint = load_checkpoint(found[-1])
        load_training_state(checkpoint.path)
    except UserError:
        return False, int(found[-1].name.split("-")[1])
    return True, int(found[-1].name.split("-")[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--signal", choices=("kill", "term"), default="kill")
    p.add_argument("--window", type=float, default=2.0, help="kill within this many seconds after the first step")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    directory = Path(tempfile.mkdtemp(dir="/tmp", prefix="cllm-faults-"))
    (directory / "corpus.txt").write_text(SHAKESPEARE.read_text()[:200_000])
    run = directory / "run"
    unloadable = cannot_resume = inside_writes = 0
    steps = []
    started = time.monotonic()
    for trial in range(args.trials):
        before = set(run.iterdir()) if run.exists() else set()
        process = start(directory, resume=trial > 0)
        step = first_step(process, timeout=120)
        if step is None:
            process.kill()
            process.wait()
            cannot_resume += 1
            print(f"trial {trial}: did not reach a step: {process.stderr.read()[-500:]}", flush=True)
            continue
        time.sleep(rng.uniform(0, args.window))
        if args.signal == "term":
            process.send_signal(signal.SIGTERM)
            time.sleep(rng.uniform(0, 0.25))
        process.kill()
        process.wait()
        leftovers = [p.name for p in set(run.iterdir()) - before if p.name.startswith(".checkpoint-")]
        inside_writes += bool(leftovers)
        ok, latest = latest_loads(run)
        unloadable += not ok
        steps.append(latest)
        if not ok:
            print(f"trial {trial}: latest checkpoint {latest} does not load", flush=True)
    final = start(directory, resume=True)  # the last kill must be resumable too
    resumed = first_step(final, timeout=120)
    final.kill()
    final.wait()
    cannot_resume += resumed is None
    print(json.dumps({"signal": "SIGKILL" if args.signal == "kill" else "SIGTERM then SIGKILL within 250 ms",
                      "trials": args.trials, "unloadable_latest_checkpoints": unloadable,
                      "runs_that_cannot_resume": cannot_resume, "kills_inside_a_write_or_prune": inside_writes,
                      "checkpoint_interval": 1, "keep_checkpoints": 2, "last_step": steps[-1] if steps else None,
                      "threads": 2, "cores": os.cpu_count(), "seconds": round(time.monotonic() - started, 1),
                      "directory": str(directory)}), flush=True)
    return 0 if unloadable == cannot_resume == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
