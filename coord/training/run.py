"""Opening a training run, new or resumed: the one path `cllm train` and `cllm serve` share."""

from dataclasses import dataclass
from pathlib import Path

import structlog

from cllm.kernels.model import GPTConfig, ParamLayout, init_params

from ..data.dataset import prepare_dataset
from ..errors import UserError
from .optimizer import Optimizer, OptimizerConfig
from .schedule import Schedule
from .trainer import RunState, TrainConfig, Trainer, check_memory, restore_state

log = structlog.get_logger("cllm.run")

MODEL_DEFAULTS = {"embed_dim": 128, "num_layers": 4, "num_heads": 4, "seq_len": 64}


@dataclass(frozen=True)
class RunRequest:
    """What a run is asked to be.

    ``settings`` holds the run settings by their command-line names (batch_size, learning_rate, ...,
    data as a path or None); ``sizes`` the model sizes (None: the default, or the resumed model's).
    """

    settings: dict
    sizes: dict
    tokenizer: str
    vocab_size: int
    cache_dir: Path
    threads: int
    run_dir: Path
    epochs: int | None = None


def model_config(sizes: dict, vocab_size: int, resumed: GPTConfig | None) -> GPTConfig:
    if resumed is not None:
        have = {"embed_dim": resumed.n_embd, "num_layers": resumed.n_layer, "num_heads": resumed.n_head,
                "seq_len": resumed.block_size}
        for name, value in have.items():
            if sizes.get(name) is not None and sizes[name] != value:
                raise UserError(f"--{name.replace('_', '-')} {sizes[name]} differs from the resumed model's {value}; "
                                "leave it out when resuming")
        return resumed
    s = {name: sizes.get(name) or default for name, default in MODEL_DEFAULTS.items()}
    if s["embed_dim"] % s["num_heads"]:
        raise UserError(f"--embed-dim {s['embed_dim']} is not divisible by --num-heads {s['num_heads']}; "
                        "choose sizes where it is (e.g. --embed-dim 128 --num-heads 4)")
    return GPTConfig(vocab_size=vocab_size, block_size=s["seq_len"], n_layer=s["num_layers"], n_head=s["num_heads"],
                     n_embd=s["embed_dim"])


def open_run(request: RunRequest, resumed=None, training_state=None, log_interval: int = 10,
             progress=None) -> Trainer:
    """A Trainer for ``request``; ``resumed`` is a loaded checkpoint (config, params, tokenizer, path) and
    ``training_state`` its training state, to continue from. ``progress`` makes a progress bar from the
    step count."""
    s = request.settings
    data = Path(s["data"]) if s["data"] is not None else None
    if data is not None and not data.exists():
        raise UserError(f"{data} does not exist; give a text file, a directory, a .jsonl or SQuAD file")
    if s["lr_schedule"] == "exponential" and s["min_lr"] <= 0:
        raise UserError("the exponential schedule needs a positive --min-lr to decay to")
    dataset = prepare_dataset(data, request.tokenizer, request.vocab_size, request.cache_dir,
                              include=tuple(s["include"] or ()), exclude=tuple(s["exclude"] or ()),
                              tokenizer=resumed[2] if resumed else None)
    model = model_config(request.sizes, dataset.tokenizer.vocab_size, resumed[0] if resumed else None)
    dataset.validate_seq_len(model.block_size)
    steps = s["steps"]
    if request.epochs:
        steps = request.epochs * dataset.steps_per_epoch(s["batch_size"] * s["grad_accum"], model.block_size)
    settings = {**s, "steps": steps}
    check_memory(model, s["batch_size"], model.block_size, request.threads)
    opt_config = OptimizerConfig(kind=s["optimizer"], beta1=s["beta1"], beta2=s["beta2"], eps=s["eps"],
                                 weight_decay=s["weight_decay"], decay_all=bool(s["decay_all"]),
                                 nesterov=bool(s["nesterov"]))
    schedule = Schedule(kind=s["lr_schedule"], lr=s["learning_rate"], warmup_steps=s["warmup_steps"],
                        decay_steps=s["decay_steps"] or steps, min_lr=s["min_lr"], cycle_steps=s["cycle_steps"])
    config = TrainConfig(batch_size=s["batch_size"], seq_len=model.block_size, steps=steps, threads=request.threads,
                         seed=s["seed"], optimizer=opt_config, schedule=schedule, grad_accum=s["grad_accum"],
                         clip_norm=s["clip_norm"], eval_interval=s["eval_interval"], eval_batches=s["eval_batches"],
                         patience=s["patience"], max_bad_steps=s["max_bad_steps"],
                         checkpoint_interval=s["checkpoint_interval"], keep_checkpoints=s["keep_checkpoints"],
                         log_interval=log_interval)
    layout = ParamLayout(model)
    if resumed:
        params = resumed[1]
        optimizer, state = restore_state(training_state, layout, opt_config, resumed[3])
        log.info("resumed", checkpoint=str(resumed[3]), step=state.step)
        if state.step >= steps:
            raise UserError(f"{resumed[3]} is at step {state.step}, already at {steps} steps; ask for more steps")
    else:
        params = init_params(model, s["seed"])
        optimizer, state = Optimizer(layout, opt_config), RunState()
    return Trainer(model, config, dataset, request.run_dir, params, optimizer, state,
                   settings={**settings, "data": str(data.resolve()) if data else None},
                   progress=progress(steps) if progress else None)
