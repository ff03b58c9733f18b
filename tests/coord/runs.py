"""Helpers for tests that run `cllm` as a real process or read corpora."""

import json
import subprocess
import sys
from pathlib import Path

from cllm.coord.data.corpus import Skipped, iter_documents

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"
TINY_MODEL = ["--embed-dim", "32", "--num-layers", "2", "--num-heads", "2", "--seq-len", "32", "--batch-size", "8"]


def command(*args) -> list:
    return [sys.executable, "-m", "cllm.coord", *map(str, args)]


def cllm(*args, timeout=600):
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=timeout)


def events(stdout: str) -> list:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def refused(result, status: int, *fragments) -> str:
    """The one line (led by ``cllm: error: ``, holding every fragment) with which `cllm` refused, exiting
    ``status`` before any training; the line."""
    assert result.returncode == status, result.stderr[-3000:]
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr[-3000:]
    line = result.stderr[:-1]
    assert line.startswith("cllm: error: ") and all(f in line for f in fragments), line
    assert not any(e["event"] == "train_started" for e in events(result.stdout))
    return line


def small_corpus(directory: Path, chars: int = 60_000) -> Path:
    path = directory / "corpus.txt"
    path.write_text(SHAKESPEARE.read_text()[:chars])
    return path


def texts(path, **options) -> list:
    """The texts of the documents of ``path``, read in order as the token cache reads them."""
    found = []
    for document in iter_documents(path, **options):
        try:
            found.append(document.text)
        except Skipped:
            pass
    return found
