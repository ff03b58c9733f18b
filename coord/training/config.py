"""A run's configuration: one frozen ``RunConfig``, built by `cllm train` and by the daemon's TOML.

Every setting is declared once below (or in ``OptimizerConfig`` and ``Schedule``, beside the code
that implements them) with its default, rule and help. The command line spells a setting
``--batch-size``, the daemon's TOML ``[training] batch_size``, a checkpoint keeps it as
``batch_size``: the names are the same everywhere.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from cllm.kernels.precision import PRECISIONS

from ..data.tokenizer import KINDS as TOKENIZERS
from ..errors import UserError
from ..nodezero import MAX_WORKERS
from ..settings import (BETA, COUNT, GLOBS, NON_NEGATIVE, PATH, POSITIVE, SECONDS, at_most, convert, declared, get,
                        one_of, plain, replaced, setting)
from .optimizer import OptimizerConfig
from .schedule import Schedule

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cllm"


@dataclass(frozen=True)
class ModelConfig:
    """The sizes of a new model (a resumed one keeps its own)."""

    embed_dim: int = setting(128, POSITIVE, "width of the residual stream; divisible by num_heads")
    num_layers: int = setting(4, POSITIVE, "transformer blocks")
    num_heads: int = setting(4, POSITIVE, "attention heads per block")
    seq_len: int = setting(64, POSITIVE, "tokens per training sequence; a new model's context length")
    init_from: Path | None = setting(None, PATH, "a Hugging Face GPT-2 directory to fine-tune: its shape, weights "
                                                 "and tokenizer replace a new model's")


@dataclass(frozen=True)
class DataConfig:
    path: Path | None = setting(None, PATH, "a text file, a directory tree, a .jsonl file or SQuAD JSON; "
                                            "default: the Python standard library's own source")
    tokenizer: str = setting("char", one_of(TOKENIZERS), "the corpus's characters, or byte-level BPE")
    vocab_size: int = setting(8192, POSITIVE, "BPE vocabulary size, at least 257 (bpe only)")
    include: tuple = setting((), GLOBS, "globs of files to read in a directory")
    exclude: tuple = setting((), GLOBS, "globs of files to skip in a directory")
    cache_dir: Path = setting(DEFAULT_CACHE, PATH, "where tokenized corpora are cached")


@dataclass(frozen=True)
class EvalConfig:
    interval: int = setting(100, COUNT, "steps between validation passes (0: at the end only)", name="eval_interval")
    batches: int = setting(8, POSITIVE, "batches per validation pass", name="eval_batches")
    patience: int = setting(0, COUNT, "validation passes without improvement before stopping (0: never)")


@dataclass(frozen=True)
class CheckpointConfig:
    dir: Path = setting(Path("runs/cllm"), PATH, "the run directory, for its checkpoints", name="checkpoint_dir")
    interval: int = setting(100, COUNT, "steps between checkpoints (0: at the end only)", name="checkpoint_interval")
    keep: int = setting(3, POSITIVE, "newest checkpoints kept, besides the best one", name="keep_checkpoints")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    batch_size: int = setting(16, POSITIVE, "sequences per micro-step")
    grad_accum: int = setting(1, POSITIVE, "micro-steps per optimizer step")
    steps: int = setting(1000, POSITIVE, "optimizer steps of the run")
    epochs: int = setting(0, COUNT, "passes over the training split, instead of steps (0: use steps)")
    threads: int = setting(0, at_most(MAX_WORKERS, low=0), "worker threads (0: the cores this process may use)")
    micro_batches: int = setting(0, COUNT, "micro-batches each micro-step's rows are cut into and handed out to "
                                           "idle workers (0: one per worker)")
    seed: int = setting(1337, COUNT, "seeds the initial weights, the batches and the dropout masks")
    dropout: float = setting(0.0, BETA, "probability of dropping each element of the embedding, the attention "
                                        "probabilities and both residual branches of every block while training")
    precision: str = setting("fp32", one_of(PRECISIONS), "the matrix products in float32, or in bfloat16 with float32 "
                                                         "accumulation (weights and optimizer state stay float32) on a "
                                                         "CPU with AVX512_BF16, or AMX with oneMKL (the bf16 extra); "
                                                         "on any other CPU, float32")
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: Schedule = Schedule()
    clip_norm: float = setting(1.0, NON_NEGATIVE, "clip the gradient's global norm to this (0: off)")
    max_bad_steps: int = setting(5, POSITIVE, "non-finite steps in a row before the run stops")
    eval: EvalConfig = EvalConfig()
    checkpoints: CheckpointConfig = CheckpointConfig()
    log_interval: int = setting(10, COUNT, "steps between step events in the log (0: none)")
    step_timeout: float = setting(600.0, SECONDS, "seconds a step may take before it is failed")
    check_interval: int = setting(100, COUNT, "steps between the checks that every MPI rank's weights are rank 0's "
                                              "(0: never)")


SETTINGS = declared(RunConfig)
BY_NAME = {s.name: s for s in SETTINGS}
# what a checkpoint keeps for --resume: the model's sizes and the tokenizer come from its own files
# (seq_len, the training windows, may be shorter than its position table, so it is kept); where the
# run lives and how this machine runs it are the resuming command's
NOT_RESUMED = {"embed_dim", "num_layers", "num_heads", "init_from", "tokenizer", "vocab_size", "cache_dir",
               "checkpoint_dir", "threads", "log_interval", "step_timeout", "check_interval"}


def table_of(name: str) -> str:
    """The daemon's TOML table of a setting: [model], [data], [service] (step_timeout) or [training]."""
    path = BY_NAME[name].path
    if path[0] in ("model", "data"):
        return path[0]
    return "service" if name == "step_timeout" else "training"


def with_values(config: RunConfig, values: dict) -> RunConfig:
    """``config`` with the settings named in ``values`` replaced (values already checked)."""
    return replaced(config, values, SETTINGS)


def checked(name: str, value, where: str):
    """A value from a TOML file or a checkpoint, checked against its setting; ``where`` names it in errors."""
    return convert(BY_NAME[name], value, where)


def values_of(config: RunConfig, names=None) -> dict:
    """The settings of ``config`` by name, as JSON keeps them."""
    return {s.name: plain(get(config, s.path)) for s in SETTINGS if names is None or s.name in names}


def resumable(config: RunConfig) -> dict:
    """What a checkpoint keeps of the run's configuration."""
    return values_of(config, {s.name for s in SETTINGS} - NOT_RESUMED)


def from_checkpoint(saved: dict, where: str) -> dict:
    """The checked settings a checkpoint kept; keys it does not know are ignored (an older version's)."""
    if "data" in saved and "path" not in saved:  # checkpoints before the names were unified
        saved = {**saved, "path": saved["data"]}
    values = {}
    for name, value in saved.items():
        if name in BY_NAME and name not in NOT_RESUMED:
            if name == "decay_steps" and value is None:
                value = 0
            if BY_NAME[name].rule.kind is Path and value is not None:
                values[name] = Path(checked(name, value, f"{where}: setting {name}"))
            elif value is not None:
                values[name] = checked(name, value, f"{where}: setting {name}")
    return values


def check(config: RunConfig, spell) -> None:
    """The checks that need more than one setting; ``spell(name)`` is how the edge names a setting."""
    m, d, s = config.model, config.data, config.schedule
    if m.embed_dim % m.num_heads:
        raise UserError(f"{spell('embed_dim')} {m.embed_dim} is not divisible by {spell('num_heads')} "
                        f"{m.num_heads}; choose sizes where it is (e.g. 128 and 4)")
    if d.tokenizer == "bpe" and d.vocab_size < 257:
        raise UserError(f"{spell('vocab_size')} must be at least 257 with the bpe tokenizer (the 256 bytes and one "
                        f"merge), got {d.vocab_size}")
    if s.kind == "plateau" and not config.eval.interval:
        raise UserError(f"the plateau schedule reduces the learning rate when validation stalls; give "
                        f"{spell('eval_interval')} > 0")
    if s.kind == "exponential" and s.min_lr <= 0:
        raise UserError(f"the exponential schedule needs a positive {spell('min_lr')} to decay to")
    if s.kind != "constant" and s.min_lr > s.lr:
        raise UserError(f"{spell('min_lr')} {s.min_lr} is above {spell('learning_rate')} {s.lr}; the schedule's "
                        "floor must not exceed its peak")

