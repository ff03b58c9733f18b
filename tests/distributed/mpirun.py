"""Run small programs under `mpiexec -n N`, with the mpiexec installed beside this Python (the `mpi` extra)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "scripts"


def mpiexec_path() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.fail("mpiexec not found: the tests need the MPI extra, pip install -e '.[test,interop,mpi]'")
    return found


def mpiexec(*args, n: int = 2, launcher=(), timeout: float = 60):
    """``mpiexec -n n [launcher options] python args...``; the completed process, output as text."""
    return subprocess.run([mpiexec_path(), "-n", str(n), *launcher, sys.executable, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def script(name: str) -> Path:
    return SCRIPTS / f"{name}.py"


def json_lines(text: str) -> list:
    """The JSON objects at the start of lines; mpiexec may put its own words after one before the newline."""
    decoder = json.JSONDecoder()
    return [decoder.raw_decode(line)[0] for line in text.splitlines() if line.startswith("{")]
