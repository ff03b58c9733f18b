"""A run's history: ``metrics.jsonl`` in its run directory, one JSON object per optimizer step.

    {"step": 120, "loss": 2.31, "lr": 0.001, "grad_norm": 0.84, "tokens_per_s": 4210.5,
     "wall_s": 61.2, "time": "2026-11-30T10:20:01.123Z", "val_loss": 2.4}

``val_loss`` is there on the steps the run evaluated; a loss or norm that was not finite is null.
``wall_s`` counts seconds of training from the run's first step, across resumes; ``time`` is ISO 8601
UTC. A step's line is written when the next step starts, a checkpoint is taken or the run ends (so the
step's evaluation joins it); each line goes to the operating system at once and the file is fsynced with
every checkpoint. A resumed run first drops the lines past its checkpoint's step, so every step is in
the file once, whatever was killed when. Under MPI only rank 0 writes it.
"""

import errno
import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import structlog

from ..errors import UserError
from .hooks import Hook, Hooks

log = structlog.get_logger("cllm.history")

FILE = "metrics.jsonl"


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


NUMBERS = ("loss", "lr", "grad_norm", "tokens_per_s", "wall_s", "val_loss")


def is_number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def is_step_record(record) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("step"), int) and not isinstance(record["step"], bool)
            and all(is_number(record.get(key)) for key in NUMBERS))


def read_lines(path: Path):
    """(line number, record or None when damaged) of each line of ``path``."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                record = json.loads(raw)
            except ValueError:
                yield number, None
                continue
            yield number, record if is_step_record(record) else None


def read_history(run: Path) -> tuple:
    """(the step records of ``run``, a run directory or its metrics.jsonl; a warning or None).

    A damaged last line is the tail of a write a kill cut short: it is left out, with a warning. Any
    other damage, a missing or empty file, is a UserError."""
    path = run / FILE if run.is_dir() else run
    if not run.exists():
        raise UserError(f"{run} does not exist; give the run directory of a cllm train run")
    if not path.is_file():
        raise UserError(f"{run} has no {FILE}; give the run directory of a cllm train run")
    records, damaged = [], None
    try:
        for number, record in read_lines(path):
            if damaged is not None:
                raise UserError(f"{path}: line {damaged} is not a step record (a JSON object with an integer "
                                "step); the file is damaged")
            if record is None:
                damaged = number
            else:
                records.append(record)
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error.strerror or error})") from None
    if not records:
        raise UserError(f"{path} has no steps yet; plot it once the run has taken a step")
    warning = f"{path}: its last line (line {damaged}) is cut short and left out" if damaged else None
    return records, warning


def kept_lines(path: Path, step: int) -> tuple:
    """(the lines a run resumed at ``step`` keeps, whether any were dropped): those up to ``step``;
    reading stops at a damaged line (the tail of a killed write)."""
    kept, dropped = [], False
    for _, record in read_lines(path):
        if record is None or record["step"] > step:
            dropped = True
            if record is None:
                break
            continue
        kept.append(record)
    return kept, dropped


def rewrite(path: Path, records: list) -> None:
    """Replace ``path`` with ``records``, atomically: a scratch file, fsynced, renamed over it."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        with open(scratch, "w") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise


class History:
    """Appends a run's steps to ``metrics.jsonl``; ``attach`` it to the trainer's hooks.

    A history that cannot be written (a full disk) is logged, never the end of the run: a line
    that fails is taken back whole, so the file never holds a torn line between two others."""

    def __init__(self, run_dir: Path, resumed_step: int | None = None):
        """A new run (``resumed_step`` None) starts the file afresh; a resumed one continues it."""
        self.path = Path(run_dir) / FILE
        self.wall_before = 0.0  # training seconds of the run before this process
        self.started = None  # monotonic time of this process's first step
        self.lr = math.nan
        self.pending = None  # the last step's record, until nothing more can join it
        self.failing = False  # the last write failed (logged once per run of failures)
        self.fd = None
        try:
            self.open(resumed_step)
        except OSError as error:
            self.failed(error, resumed_step)

    def open(self, resumed_step: int | None) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        if resumed_step is not None and self.path.exists():
            kept, dropped = kept_lines(self.path, resumed_step)
            if dropped:
                rewrite(self.path, kept)
                log.info("history_truncated", path=str(self.path), step=resumed_step, kept=len(kept))
            if kept:
                self.wall_before = kept[-1].get("wall_s") or 0.0
        else:
            flags |= os.O_TRUNC
        self.fd = os.open(self.path, flags, 0o644)
        self.size = os.fstat(self.fd).st_size

    def attach(self, hooks: Hooks) -> None:
        hooks.on(Hook.BATCH_START, self.step_starts)
        hooks.on(Hook.BATCH_END, self.step_ends)
        hooks.on(Hook.EVALUATED, self.evaluated)
        hooks.on(Hook.CHECKPOINT, self.checkpointed)

    def step_starts(self, info: dict) -> None:
        self.write_pending()
        self.lr = info["lr"]
        if self.started is None:
            self.started = time.monotonic()

    def step_ends(self, info: dict) -> None:
        self.write_pending()
        wall = self.wall_before + time.monotonic() - (self.started or time.monotonic())
        self.pending = {"step": info["step"], "loss": finite(info["loss"]), "lr": self.lr,
                        "grad_norm": finite(info["grad_norm"]),
                        "tokens_per_s": round(info["tokens"] / info["seconds"], 1) if info["seconds"] > 0 else None,
                        "wall_s": round(wall, 3),
                        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")}

    def evaluated(self, info: dict) -> None:
        if self.pending is not None and self.pending["step"] == info["step"]:
            self.pending["val_loss"] = finite(info["val_loss"])

    def checkpointed(self, info: dict) -> None:
        self.write_pending()
        self.sync()

    def write_pending(self) -> None:
        if self.pending is None or self.fd is None:
            return
        record, self.pending = self.pending, None
        line = (json.dumps(record) + "\n").encode()
        try:
            if os.write(self.fd, line) != len(line):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as error:
            try:
                os.ftruncate(self.fd, self.size)  # no torn line stays behind
            except OSError:
                pass
            self.failed(error, record["step"])
            return
        self.size += len(line)
        self.failing = False

    def sync(self) -> None:
        if self.fd is not None:
            try:
                os.fsync(self.fd)
            except OSError as error:
                self.failed(error, None)

    def failed(self, error: OSError, step: int | None) -> None:
        if not self.failing:
            log.warning("history_not_written", path=str(self.path), step=step, error=str(error))
        self.failing = True

    def close(self) -> None:
        if self.fd is None:
            return
        self.write_pending()
        self.sync()
        os.close(self.fd)
        self.fd = None
