"""Opening a training run, new or resumed: the one path `cllm train` and `cllm serve` share."""

from functools import partial

import structlog

from cllm.kernels.model import GPTConfig, ParamLayout, init_params

from ..checkpoints.run_dir import claim_run_dir
from ..checkpoints.store import load_checkpoint
from ..data.dataset import prepare_dataset
from ..distributed.data import shared_dataset
from ..distributed.ranks import together
from ..errors import UserError
from ..nodezero.tree import usable_cores
from .config import RunConfig, with_values
from .history import History
from .optimizer import Optimizer
from .trainer import RunState, Trainer, check_memory, restore_state

log = structlog.get_logger("cllm.run")


def open_run(config: RunConfig, resumed=None, training_state=None, progress=None, overwrite: bool = False,
             ranks=None) -> Trainer:
    """A Trainer for ``config`` (checked by the caller); ``resumed`` is a loaded checkpoint and
    ``training_state`` its training state, to continue from. Otherwise a new run starts from the
    model directory ``init_from`` (its shape, weights and tokenizer), or from a new model.
    ``progress`` makes a progress bar from the step count. The run directory is claimed first
    (locked, proven writable, another run's refused unless ``overwrite``), and taken only once
    everything else is checked. Over MPI ``ranks``, rank 0 alone claims the run directory and writes the
    token cache, the checkpoints and the run's history (metrics.jsonl); every rank gets the same Trainer."""
    run_dir = None
    with together(ranks, "rank 0's claim of the run directory"):
        if ranks is None or ranks.is_root:
            run_dir = claim_run_dir(config.checkpoints.dir, resumed.path if resumed else None, overwrite)
    try:
        trainer = prepare(config, resumed, training_state, progress, ranks)
        if run_dir is not None:
            run_dir.take()
    except BaseException:
        if run_dir is not None:
            run_dir.abandon()
        raise
    trainer.run_directory = run_dir
    if run_dir is not None:
        trainer.history = History(trainer.run_dir, trainer.state.step if resumed else None)
        trainer.history.attach(trainer.hooks)
    return trainer


def prepare(config: RunConfig, resumed, training_state, progress, ranks=None) -> Trainer:
    d, m = config.data, config.model
    with together(ranks, "the ranks' look at the data and the starting model"):
        if d.path is not None and not d.path.exists():
            raise UserError(f"{d.path} does not exist; give a text file, a directory, a .jsonl or SQuAD file")
        start = resumed or (load_checkpoint(m.init_from) if m.init_from is not None else None)
        if ranks is not None and config.batch_size < ranks.size:
            raise UserError(f"--batch-size {config.batch_size} is fewer sequences than the {ranks.size} MPI ranks; "
                            "give every rank at least one (--batch-size is the whole step's)")
    load = prepare_dataset if ranks is None else partial(shared_dataset, ranks)
    dataset = load(d.path, d.tokenizer, d.vocab_size, d.cache_dir, include=d.include, exclude=d.exclude,
                   tokenizer=start.tokenizer if start else None)
    with together(ranks, "the ranks' model, memory and optimizer state"):
        model, config, optimizer, state, params = shape_run(config, start, dataset, resumed, training_state, ranks)
    if ranks is not None:  # the same start everywhere: a new model's seed, or the same checkpoint
        ranks.run_sync("the weights check at the start", ranks.compare_weights, params, state.step)
    return Trainer(config, model, dataset, params, optimizer, state,
                   progress=progress(config.steps) if progress else None, ranks=ranks)


def shape_run(config: RunConfig, start, dataset, resumed, training_state, ranks) -> tuple:
    """(model, config, optimizer, state, params) of a run on ``dataset``: a new model, or ``start``'s; every
    setting resolved, the memory checked, the optimizer's state restored from ``training_state``."""
    m = config.model
    if start:
        model = start.model
        if m.seq_len > model.block_size:
            raise UserError(f"seq_len {m.seq_len} is longer than the {model.block_size} positions of {start.path}; "
                            f"use at most {model.block_size}")
    else:
        model = GPTConfig(vocab_size=dataset.tokenizer.vocab_size, block_size=m.seq_len, n_layer=m.num_layers,
                          n_head=m.num_heads, n_embd=m.embed_dim)
    dataset.validate_seq_len(m.seq_len)
    resolved = {"threads": config.threads or usable_cores(), "epochs": 0}
    if config.epochs:
        resolved["steps"] = config.epochs * dataset.steps_per_epoch(config.batch_size * config.grad_accum,
                                                                    config.model.seq_len)
    config = with_values(config, resolved)
    rows = config.batch_size if ranks is None else -(-config.batch_size // ranks.size)  # this process's share
    check_memory(model, rows, config.model.seq_len, config.threads, config.precision)
    layout = ParamLayout(model)
    if resumed:
        params = resumed.params
        optimizer, state = restore_state(training_state, layout, config.optimizer, resumed.path)
        log.info("resumed", checkpoint=str(resumed.path), step=state.step)
        if state.step >= config.steps:
            raise UserError(f"{resumed.path} is at step {state.step}, already at {config.steps} steps; "
                            "ask for more steps")
    else:
        params = start.params if start else init_params(model, config.seed)
        optimizer, state = Optimizer(layout, config.optimizer), RunState()
        if start:
            log.info("initialised_from", path=str(start.path), parameters=int(params.size))
    return model, config, optimizer, state, params
