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
