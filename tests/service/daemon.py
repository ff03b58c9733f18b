"""A real `cllm serve` process for the service tests: started, talked to, signalled, restarted."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from cllm.protocol.control import ControlRequest, decode_reply, encode_request

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"

CONFIG = """
[data]
path = "corpus.txt"
tokenizer = "char"
cache_dir = "cache"

[model]
embed_dim = 32
num_layers = 2
num_heads = 2
seq_len = 32

[training]
batch_size = 8
steps = {steps}
threads = 2
learning_rate = 3e-3
eval_interval = {eval_interval}
checkpoint_interval = {checkpoint_interval}

[service]
state_dir = "state"
socket = "{socket}"
step_timeout = 60

[logging]
level = "info"
format = "json"
"""


def write_config(directory: Path, steps=100000, eval_interval=0, checkpoint_interval=50, corpus_chars=60_000) -> Path:
    (directory / "corpus.txt").write_text(SHAKESPEARE.read_text()[:corpus_chars])
    sock = Path(tempfile.mkdtemp(dir="/tmp")) / "c.sock"  # AF_UNIX paths must be short
    path = directory / "cllm.toml"
    path.write_text(CONFIG.format(steps=steps, eval_interval=eval_interval, checkpoint_interval=checkpoint_interval,
                                  socket=sock))
    return path


def free_port() -> int:
    """A loopback TCP port no one listens on, for the daemon's metrics."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    """{sample with its labels: value} of the Prometheus text served on ``port``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if not line.startswith("#")}


class Daemon:
    """`cllm serve --config FILE` with its JSON log collected from standard output, and its standard error
    (where ranks other than 0 log) read as it comes, so that a full pipe never stops the daemon."""

    def __init__(self, config: Path, env=None, launcher=()):
        """``launcher``: a command the daemon runs under, e.g. ``mpiexec -n 2``."""
        self.config = config
        self.socket = Path(next(line.split('"')[1] for line in config.read_text().splitlines()
                                if line.startswith("socket")))
        self.process = subprocess.Popen([*launcher, sys.executable, "-m", "cllm.coord", "serve", "--config", str(config)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, **(env or {})})
        self.events = []
        self.errors = []  # standard error's lines
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()
        self.error_reader = threading.Thread(target=self.read_errors, daemon=True)
        self.error_reader.start()

    def read(self):
        for line in self.process.stdout:
            if line.startswith("{"):
                with self.lock:
                    self.events.append(json.loads(line))

    def read_errors(self):
        for line in self.process.stderr:
            with self.lock:
                self.errors.append(line)

    def stderr(self) -> str:
        self.error_reader.join(10)
        with self.lock:
            return "".join(self.errors)

    def wait_for(self, predicate, timeout=120.0):
        """The first event matching ``predicate``, waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for event in self.events:
                    if predicate(event):
                        return event
            if self.process.poll() is not None and not self.reader.is_alive():
                raise AssertionError(f"the daemon exited with {self.process.returncode}: {self.stderr()}")
            time.sleep(0.02)
        raise AssertionError("timed out waiting for an event")

    def wait_for_step(self, step: int) -> dict:
        return self.wait_for(lambda e: e["event"] == "step" and e["step"] >= step)

    def ctl(self, command: str, timeout=120.0, **args) -> dict:
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            assert time.monotonic() < deadline, "the control socket never appeared"
            time.sleep(0.02)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket))
            sock.sendall(encode_request(ControlRequest(1, command, args)))
            return decode_reply(sock.makefile("rb").readline())

    def stop(self, timeout=120.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout)
        self.reader.join(timeout)
        return self.process.returncode

    def steps(self) -> dict:
        with self.lock:
            return {e["step"]: e["loss"] for e in self.events if e["event"] == "step"}
