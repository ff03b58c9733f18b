"""A long soak of the daemon under clients: do memory, file descriptors and threads stay flat?

Runs `cllm serve` on tinyshakespeare (a tiny model, a checkpoint every 50 steps, 3 kept)
while --clients threads talk to its control socket without pause for --minutes: status,
stats, jobs, a checkpoint, pause and resume, and now and then a malformed line, an
oversized one or a client that connects and says nothing. Prints the daemon's resident
memory, open file descriptors and threads after a warm-up and at the end, the requests
served and refused, and the steps trained.

    python benchmarks/daemon_soak.py --minutes 10 --clients 4
"""

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"

CONFIG = """
[data]
path = "{data}"
cache_dir = "{dir}/cache"
[model]
embed_dim = 32
num_layers = 2
num_heads = 2
seq_len = 32
[training]
batch_size = 8
steps = 100000000
threads = 2
eval_interval = 200
checkpoint_interval = 50
keep_checkpoints = 3
[service]
state_dir = "{dir}/state"
socket = "{dir}/c.sock"
"""

REQUESTS = ["status"] * 4 + ["stats"] * 2 + ["jobs", "checkpoint", "pause", "resume", "resume"]


def usage(pid: int) -> dict:
    """Resident memory (MiB), open file descriptors and threads of process ``pid``."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_mib": round(int(status["VmRSS"].split()[0]) / 1024, 1), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(status["Threads"])}


def ask(path: Path, line: bytes, timeout: float = 120.0) -> dict | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        if line:
            sock.sendall(line)
        reply = sock.makefile("rb").readline()
    return json.loads(reply) if reply else None


def client(path: Path, until: float, seed: int, counts: dict, lock: threading.Lock) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        roll = rng.random()
        if roll < 0.02:
            line, kind = b"\x00\xffnot json\n", "malformed"
        elif roll < 0.03:
            line, kind = b"{" + b" " * 70_000 + b"}\n", "oversized"
        elif roll < 0.035:
            line, kind = b"", "silent"  # connects and says nothing: answered at the read deadline
        else:
            kind = rng.choice(REQUESTS)
            line = json.dumps({"v": 1, "id": seed, "command": kind, "args": {}}).encode() + b"\n"
        try:
            reply = ask(path, line)
            outcome = "ok" if reply and reply["ok"] else "refused"
        except OSError as error:
            outcome = f"error {kind}: {type(error).__name__}"
        with lock:
            counts[outcome] = counts.get(outcome, 0) + 1
            counts[kind] = counts.get(kind, 0) + 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--warmup", type=float, default=30.0, help="seconds of training before the first measurement")
    args = p.parse_args()
    directory = Path(tempfile.mkdtemp(dir="/tmp", prefix="cllm-soak-"))
    config = directory / "cllm.toml"
    config.write_text(CONFIG.format(data=SHAKESPEARE, dir=directory))
    daemon = subprocess.Popen([sys.executable, "-m", "cllm.coord", "serve", "--config", str(config)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    steps = []
    threading.Thread(target=lambda: [steps.append(json.loads(line)["step"]) for line in daemon.stdout
                                     if line.startswith("{") and '"event": "step"' in line], daemon=True).start()
    while not steps:
        if daemon.poll() is not None:
            print("the daemon did not start", file=sys.stderr)
            return 1
        time.sleep(0.1)
    time.sleep(args.warmup)
    start, first_step = usage(daemon.pid), steps[-1]
    counts, lock = {}, threading.Lock()
    until = time.monotonic() + args.minutes * 60
    clients = [threading.Thread(target=client, args=(directory / "c.sock", until, i, counts, lock))
               for i in range(args.clients)]
    for thread in clients:
        thread.start()
    samples = [start]
    while time.monotonic() < until:
        time.sleep(min(30.0, max(0.0, until - time.monotonic())))
        samples.append(usage(daemon.pid))
    for thread in clients:
        thread.join()
    end = usage(daemon.pid)
    daemon.terminate()
    code = daemon.wait(300)
    print(json.dumps({"minutes": args.minutes, "clients": args.clients, "start": start, "end": end,
                      "max_rss_mib": max(s["rss_mib"] for s in samples + [end]),
                      "max_fds": max(s["fds"] for s in samples + [end]),
                      "max_threads": max(s["threads"] for s in samples + [end]),
                      "requests": {k: counts[k] for k in sorted(counts)},
                      "steps_trained": steps[-1] - first_step, "exit_status": code, "cores": os.cpu_count(),
                      "directory": str(directory)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
