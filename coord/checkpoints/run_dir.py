"""A run directory belongs to one run, and to one process at a time.

``run.json`` names the run (a random id); each checkpoint's marker repeats it. A new run is refused
in a directory whose checkpoints belong to another run unless asked to overwrite them, and so is a
resumed run in a directory of another run: two runs never mix their checkpoints and ``best.json``.
While a run trains, its process holds the directory's lock (``run.lock``, with its pid): a second
process is refused at once. Claiming the directory also proves it can be written, before any
training, and removes the scratch of writers that died.
"""

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import OperationalError, UserError
from ..files import Locked, Scratch, discard, hold_lock, remove_stale, scratch_name, write_atomically
from .store import BEST_FILE, MARKER, RUN_FILE, SCRATCH, list_checkpoints, run_of

LOCK_FILE = "run.lock"


@dataclass
class RunDirectory:
    """A claimed run directory: locked; ``take`` makes it the run's once the run is sure to start."""

    path: Path
    run_id: str
    lock: int | None  # the descriptor holding the lock
    created: bool  # the claim made the directory
    theirs: list  # another run's checkpoints, to go when the run starts (--overwrite)

    def take(self) -> None:
        """The run starts: another run's checkpoints go, run.json names this run."""
        for checkpoint in self.theirs:
            discard(checkpoint)
        if self.theirs:
            (self.path / BEST_FILE).unlink(missing_ok=True)
        self.theirs = []
        if run_of(self.path, RUN_FILE) != self.run_id:
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            write_atomically(self.path / RUN_FILE, json.dumps({"run": self.run_id, "created": created}) + "\n")

    def release(self) -> None:
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None

    def abandon(self) -> None:
        """The run does not start after all: release it, and leave no trace of a directory the claim made."""
        self.release()
        if self.created:
            (self.path / LOCK_FILE).unlink(missing_ok=True)
            try:
                self.path.rmdir()
            except OSError:
                pass


def claim_run_dir(path: Path, resumed_from: Path | None = None, overwrite: bool = False) -> RunDirectory:
    """Lock ``path`` for a new run, or for the run of the checkpoint ``resumed_from``; nothing in it changes
    until ``take``.

    UserError: another process trains there, or another run's checkpoints are there (and not
    ``overwrite``). OperationalError: the directory cannot be made or written."""
    path = Path(path)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock = hold_lock(path / LOCK_FILE)
    except Locked as error:
        raise UserError(f"{path} is in use by another training process (pid {error.holder}); wait for it to end, "
                        "or give another --checkpoint-dir") from None
    except OSError as error:
        raise OperationalError(f"cannot use the run directory {path} ({error.strerror}); give a directory this "
                               "process can create and write") from None
    claim = RunDirectory(path, "", lock, created, [])
    try:
        Scratch(path / scratch_name(".checkpoint-probe.tmp-")).remove()
        remove_stale(path, SCRATCH)
        claim.run_id, claim.theirs = owner(path, resumed_from, overwrite)
    except OSError as error:
        claim.abandon()
        raise OperationalError(f"cannot write in the run directory {path} ({error.strerror}); free space or fix its "
                               "permissions, then start again") from None
    except BaseException:
        claim.abandon()
        raise
    return claim


def owner(path: Path, resumed_from: Path | None, overwrite: bool) -> tuple:
    """(the run id the directory is to belong to, the other run's checkpoints there); refuses those
    unless ``overwrite``."""
    current = run_of(path, RUN_FILE)
    wanted = run_of(resumed_from, MARKER) if resumed_from is not None else None
    here = resumed_from is not None and resumed_from.parent.resolve() == path.resolve()
    found = list_checkpoints(path)
    if resumed_from is None:
        theirs = found
    elif here:
        theirs = []  # continuing the directory's own run
    else:
        theirs = [c for c in found if wanted is None or run_of(c, MARKER) != wanted]
    if theirs and not overwrite:
        what = f"run {current}" if current else "another run"
        how = f"continue it with --resume {path}, " if resumed_from is None else ""
        raise UserError(f"{path} holds the checkpoints of {what}; {how}give another --checkpoint-dir, or add "
                        "--overwrite to replace them")
    return wanted or (current if here else None) or secrets.token_hex(8), theirs
