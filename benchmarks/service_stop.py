"""How the daemon stops: seconds from SIGTERM to exit, and steps lost to SIGKILL.

Runs `cllm serve` on tinyshakespeare with the default model and checkpoint interval (100
steps), lets it train, sends SIGTERM and times the exit (the step in flight, the final
evaluation and the checkpoint); then restarts it, kills it with SIGKILL at several points
and counts the steps between the last one it logged and the one it resumes from.

    python benchmarks/service_stop.py --kills 5
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"

CONFIG = """
[data]
path = "{data}"
cache_dir = "{dir}/cache"
[training]
steps = 1000000
log_interval_note = ""
[service]
state_dir = "{dir}/state"
socket = "{dir}/c.sock"
"""


def start(config: Path):
    return subprocess.Popen([sys.executable, "-m", "cllm.coord", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def read_until(process, predicate):
    """Events up to and including the first matching ``predicate``."""
    seen = []
    for line in process.stdout:
        if line.startswith("{"):
            event = json.loads(line)
            seen.append(event)
            if predicate(event):
                return seen
    return seen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    directory = Path(tempfile.mkdtemp(dir="/tmp"))
    config = directory / "cllm.toml"
    config.write_text(CONFIG.format(data=SHAKESPEARE, dir=directory).replace('log_interval_note = ""\n', ""))

    process = start(config)
    read_until(process, lambda e: e["event"] == "step" and e["step"] >= 150)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    events = read_until(process, lambda e: e["event"] == "service_stopped")
    process.wait()
    stop_s = time.monotonic() - sent
    stopped_at = next(e["step"] for e in events if e["event"] == "checkpoint_saved")
    print(f"SIGTERM to exit: {stop_s:.2f} s (exit status {process.returncode}, checkpoint at step {stopped_at})")

    lost, last_step = [], None
    for round_ in range(args.kills + 1):
        process = start(config)
        resumed = read_until(process, lambda e: e["event"] == "resumed")[-1]["step"]
        if last_step is not None:
            lost.append(last_step - resumed)
        if round_ == args.kills:
            process.send_signal(signal.SIGTERM)
            process.wait()
            break
        target = resumed + rng.randint(20, 180)
        seen = read_until(process, lambda e: e["event"] == "step" and e["step"] >= target)
        last_step = max(e["step"] for e in seen if e["event"] == "step")
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    print(f"steps lost to SIGKILL at {args.kills} random points (checkpoint every 100 steps): {lost}, "
          f"at most {max(lost)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
