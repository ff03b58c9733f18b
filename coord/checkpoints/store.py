"""Checkpoints: a directory the Hugging Face ecosystem loads as a GPT-2 model and its tokenizer.

``model.safetensors`` holds the tensors under their GPT-2 names (``transformer.wte.weight``,
``transformer.h.0.attn.c_attn.weight`` in the Conv1D (in, out) layout, ..., ``lm_head.weight``
when the head is untied), ``config.json`` is a GPT-2 config, ``tokenizer.json`` and the files
transformers reads beside it (``tokenizer_config.json``, ``special_tokens_map.json``,
``generation_config.json``) sit beside them, and ``training_state.npz`` carries what exact
resumption needs. Loading reads any Hugging Face GPT-2 directory the same way (see hf.py).

A checkpoint is written into a scratch directory beside its final place; every file is
flushed to disk, then the completion marker ``checkpoint_complete.json`` (which lists every
other file and its size) is written last, and the directory is renamed into place, swapped
with an older one of the same step in one atomic step. A checkpoint is complete only with
its marker, and pruning renames a checkpoint away before deleting it: a crash at any moment
leaves every listed checkpoint whole. Loading a run directory takes its newest checkpoint
that loads, with one warning naming those it passed over.
"""

import errno
import json
import lzma
import os
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import structlog
from safetensors import SafetensorError
from safetensors.numpy import save_file

from cllm.kernels.model import GPTConfig

from ..errors import UserError
from ..data.tokenizer import load_tokenizer
from ..files import Scratch, discard, remove_stale, replace_directory, scratch_name, write_atomically
from .hf import CONFIG_FILE, WEIGHTS_FILE, hf_config, hf_tensors, read_config, read_weights, tokenizer_side_files

log = structlog.get_logger("cllm.checkpoints")

BEST_FILE = "best.json"
STATE_FILE = "training_state.npz"
MARKER = "checkpoint_complete.json"
RUN_FILE = "run.json"  # the id of the run a run directory belongs to (checkpoints/run_dir.py)
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d{8})$")
SCRATCH = ".checkpoint-*.tmp-*"
# what numpy's and zipfile's readers raise on a damaged archive (an encrypted or unknown-compression
# entry is a RuntimeError or NotImplementedError there)
ARCHIVE_ERRORS = (OSError, ValueError, EOFError, KeyError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
                  zlib.error, lzma.LZMAError, struct.error)


class Checkpoint(NamedTuple):
    """A loaded checkpoint: the model's config, its flat float32 parameters, its tokenizer, its directory."""

    model: GPTConfig
    params: np.ndarray
    tokenizer: object
    path: Path


class TrainingState(NamedTuple):
    """What a checkpoint keeps for resuming: optimizer moments and step, the run's counters
    (step, best_val, best_step, evals_since_best, bad_in_row, then the plateau schedule's best, stalled and
    reductions; a checkpoint written before that schedule has the first five) and the run's settings by name."""

    optimizer_state: np.ndarray
    optimizer_step: int
    run_state: np.ndarray
    settings: dict

    @property
    def step(self) -> int:
        return int(self.run_state[0])


def run_of(path: Path, name: str) -> str | None:
    """The run id recorded in the JSON file ``path / name``: run.json, or a checkpoint's marker."""
    try:
        value = json.loads((Path(path) / name).read_text()).get("run")
    except (OSError, ValueError, RecursionError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def write_marker(directory: Path, step: int, run_id: str | None) -> None:
    """Flush every file of ``directory`` to disk, then write the completion marker listing them."""
    files = {}
    for item in sorted(directory.rglob("*")):
        if item.is_file():
            with open(item, "rb") as f:
                os.fsync(f.fileno())
            files[str(item.relative_to(directory))] = item.stat().st_size
    with open(directory / MARKER, "w") as f:
        f.write(json.dumps({"format": 1, "run": run_id, "step": step, "files": files}, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())


def incomplete(path: Path) -> str | None:
    """Why the checkpoint ``path`` is not whole by its marker, or None when it is."""
    try:
        files = json.loads((path / MARKER).read_text())["files"]
        for name, size in files.items():
            if (path / name).stat().st_size != size:
                return f"{name} is not the size its marker records"
    except FileNotFoundError as error:
        return f"{Path(error.filename).name} is missing"
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as error:
        return f"its {MARKER} cannot be read ({error})"
    return None


def save_checkpoint(run_dir: Path, step: int, cfg: GPTConfig, params: np.ndarray, tokenizer, state: dict,
                    dropout: float = 0.0) -> Path:
    """Write ``run_dir/checkpoint-<step>`` atomically; returns its path. ``dropout`` is the run's, for config.json."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"checkpoint-{step:08d}"
    staging = Scratch(run_dir / scratch_name(f".{final.name}.tmp-"), directory=True)
    try:
        try:
            save_file(hf_tensors(cfg, params), str(staging.path / WEIGHTS_FILE), metadata={"format": "pt"})
        except SafetensorError as error:  # the library's word for an I/O error, such as a full disk
            raise OSError(errno.EIO, f"{WEIGHTS_FILE}: {error}") from None
        (staging.path / CONFIG_FILE).write_text(json.dumps(hf_config(cfg, tokenizer.eos_id, dropout), indent=2) + "\n")
        tokenizer.save(staging.path)
        for name, content in tokenizer_side_files(cfg, tokenizer.eos_id).items():
            (staging.path / name).write_text(json.dumps(content, indent=2) + "\n")
        np.savez(staging.path / STATE_FILE, **state)
        write_marker(staging.path, step, run_of(run_dir, RUN_FILE))  # last: after every other file
        replace_directory(staging.path, final)
    except BaseException:
        staging.remove()
        raise
    staging.release()
    return final


def mark_best(run_dir: Path, checkpoint: Path, val_loss: float) -> None:
    """Record ``checkpoint`` as the run's best (``best.json``); pruning keeps it."""
    write_atomically(Path(run_dir) / BEST_FILE, json.dumps({"checkpoint": checkpoint.name, "val_loss": val_loss}) + "\n")


def best_checkpoint(run_dir: Path) -> Path | None:
    try:
        name = json.loads((Path(run_dir) / BEST_FILE).read_text())["checkpoint"]
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        return None
    if not isinstance(name, str) or not CHECKPOINT_NAME.match(name):
        return None
    path = Path(run_dir) / name
    return path if path.is_dir() else None


def prune_checkpoints(run_dir: Path, keep: int) -> list:
    """Delete all but the ``keep`` newest checkpoints and the best one, and the scratch of writers that
    died (never another live process's)."""
    run_dir = Path(run_dir)
    best = best_checkpoint(run_dir)
    found = list_checkpoints(run_dir)
    doomed = [p for p in found[:max(0, len(found) - keep)] if p != best]
    for path in doomed:
        discard(path)
    remove_stale(run_dir, SCRATCH)
    return doomed


def load_training_state(path: Path) -> TrainingState:
    """What a checkpoint's ``training_state.npz`` keeps."""
    file = Path(path) / STATE_FILE
    try:
        with np.load(file, allow_pickle=False) as data:
            state = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise UserError(f"{file} is missing; this checkpoint holds weights only and cannot be resumed") from None
    except ARCHIVE_ERRORS as error:
        raise UserError(f"{file} cannot be read ({error or type(error).__name__}); the checkpoint is damaged") from None
    missing = {"optimizer_state", "optimizer_step", "run_state", "settings"} - set(state)
    if missing:
        raise UserError(f"{file} lacks {', '.join(sorted(missing))}; the checkpoint is damaged")
    try:
        settings = json.loads(str(state["settings"]))
        if not isinstance(settings, dict):
            raise ValueError("the settings are not an object")
        run_state = state["run_state"]
        if run_state.shape not in ((5,), (8,)) or not np.issubdtype(run_state.dtype, np.number):
            raise ValueError(f"run_state has shape {run_state.shape} of {run_state.dtype}, not 8 (or 5) numbers")
        step = state["optimizer_step"]
        if step.shape != () or not np.issubdtype(step.dtype, np.integer):
            raise ValueError("optimizer_step is not a whole number")
    except (ValueError, RecursionError) as error:
        raise UserError(f"{file}: {error}; the checkpoint is damaged") from None
    return TrainingState(state["optimizer_state"], int(step), run_state.astype(np.float64), settings)


def list_checkpoints(run_dir: Path) -> list:
    """Complete checkpoints (those with their marker) in ``run_dir``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if (m := CHECKPOINT_NAME.match(p.name)) and (p / MARKER).is_file()]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint (or any Hugging Face GPT-2 directory) at ``path``, or the newest checkpoint of the
    run directory ``path`` that loads."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; give a checkpoint directory or a run's checkpoint directory")
    if (path / "config.json").exists():
        return load_one(path)
    found = list_checkpoints(path)
    if not found:
        raise UserError(f"{path} holds no checkpoint (no config.json, no checkpoint-* directory with its {MARKER})")
    skipped = {}
    for checkpoint in reversed(found):
        reason = incomplete(checkpoint)
        if reason is None:
            try:
                loaded = load_one(checkpoint)
            except UserError as error:
                reason = str(error)
            else:
                if skipped:
                    log.warning("checkpoint_fallback", checkpoint=str(checkpoint), skipped=skipped)
                return loaded
        skipped[checkpoint.name] = reason
    newest = found[-1].name
    raise UserError(f"{path} holds no checkpoint that loads; the newest, {newest}: {skipped[newest]}")


def load_one(path: Path) -> Checkpoint:
    cfg = read_config(path)
    params = read_weights(path, cfg)
    tokenizer = load_tokenizer(path)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise UserError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but config.json says "
                        f"{cfg.vocab_size}; the tokenizer belongs to another model")
    return Checkpoint(cfg, params, tokenizer, path)
