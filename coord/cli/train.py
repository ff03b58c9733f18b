"""`cllm train`: its options are the run's declared settings (coord.training.config)."""

import json
import shlex
import sys
from pathlib import Path

from ..errors import UserError
from ..logs import configure
from ..settings import Declared, from_text
from ..training.config import BY_NAME, SETTINGS, RunConfig, check, from_checkpoint, resumable, with_values
from .options import add_logging

GROUPS = {"model": "model size", "data": "data", "optimizer": "optimisation", "schedule": "learning-rate schedule",
          "eval": "evaluation", "checkpoints": "checkpoints"}


def spell(name: str) -> str:
    """How the command line names a setting in messages."""
    return "DATA" if name == "path" else "--" + name.replace("_", "-")


def option(group, s: Declared) -> None:
    default = "the cores this process may use" if s.name == "threads" else s.default
    kwargs = {"dest": s.name, "default": None, "help": f"{s.help} (default: {default})"}
    if s.rule.kind is bool:
        kwargs.update(action="store_const", const=True, help=s.help)
    elif s.rule.kind is tuple:
        kwargs.update(action="append", help=f"{s.help} (repeatable)")
    elif s.rule.choices:
        kwargs.update(choices=s.rule.choices)
    else:
        kwargs.update(type=from_text(s.rule), metavar={int: "N", float: "X"}.get(s.rule.kind, "PATH"))
    group.add_argument(spell(s.name), **kwargs)


def add_parser(commands) -> None:
    p = commands.add_parser("train", help="train a model on a text corpus")
    p.add_argument("data", nargs="?", type=Path, help=BY_NAME["path"].help)
    groups = {}
    length = p.add_mutually_exclusive_group()
    for s in SETTINGS:
        if s.name == "path":
            continue
        if s.name in ("steps", "epochs"):
            option(length, s)
            continue
        title = GROUPS.get(s.path[0], "run")
        if title not in groups:
            groups[title] = p.add_argument_group(title)
        option(groups[title], s)
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="a TOML file of settings, in the tables of the daemon's configuration ([data], [model], "
                        "[training]; see deploy/cllm.toml); options given here override it")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue a run from its checkpoint directory; the model, tokenizer "
                                               "and settings come from the checkpoint unless given again")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run even where another run's checkpoints are: they are deleted")
    add_logging(p)
    p.set_defaults(run=run)


def given_values(args) -> dict:
    """The settings the command line gives: those of ``--config`` FILE, overridden by the options."""
    from ..service.config import load_run_file

    from_file = load_run_file(args.config) if args.config is not None else {}
    given = {s.name: getattr(args, s.name) for s in SETTINGS if getattr(args, s.name, None) is not None}
    if args.data is not None:
        given["path"] = args.data
    for name in ("include", "exclude"):
        if name in given:
            given[name] = tuple(given[name])
    if "steps" in given or ("steps" in from_file and "epochs" not in from_file):
        given["epochs"] = 0  # a length in steps, not a resumed run's epochs
    return {**from_file, **given}


def sizes_of(model) -> dict:
    return {"embed_dim": model.n_embd, "num_layers": model.n_layer, "num_heads": model.n_head}


def refuse_conflicts(given: dict, have: dict, whose: str, advice: str) -> None:
    for name, value in have.items():
        if name in given and given[name] != value:
            raise UserError(f"{spell(name)} {given[name]} differs from {whose} {value}; {advice}")


def resumed_values(given: dict, resumed, saved) -> dict:
    """The settings of a resumed run: the checkpoint's, with what the command line gives again."""
    values = from_checkpoint(saved.settings, str(resumed.path))
    values.setdefault("seq_len", resumed.model.block_size)  # checkpoints that did not keep it trained at full length
    have = {**sizes_of(resumed.model), "seq_len": values["seq_len"], "tokenizer": resumed.tokenizer.kind}
    refuse_conflicts(given, have, "the resumed run's", "leave it out when resuming")
    if "vocab_size" in given:
        raise UserError("--vocab-size applies to a new tokenizer; a resumed run keeps its own")
    values["checkpoint_dir"] = resumed.path.parent
    return {**values, **given}


def initial_values(given: dict) -> dict:
    """The settings of a run that starts from the model directory ``--init-from``: its shape and
    tokenizer are the model's, its sequence length at most the model's context (by default all of it)."""
    from ..checkpoints.hf import read_config

    directory = given["init_from"]
    model = read_config(directory)
    refuse_conflicts(given, sizes_of(model), f"{directory}'s", "leave it out with --init-from")
    for name in ("tokenizer", "vocab_size"):
        if name in given:
            raise UserError(f"{spell(name)} applies to a new tokenizer; with --init-from the tokenizer is "
                            f"{directory}'s")
    if given.get("seq_len", 0) > model.block_size:
        raise UserError(f"--seq-len {given['seq_len']} is longer than the {model.block_size} positions of "
                        f"{directory}; use at most {model.block_size}")
    return {"seq_len": model.block_size, **given}


def config_from(args, resumed=None, saved=None) -> RunConfig:
    given = given_values(args)
    if resumed:
        values = resumed_values(given, resumed, saved)
    else:
        values = initial_values(given) if "init_from" in given else given
    config = with_values(RunConfig(), values)
    check(config, spell)
    return config


def run(args) -> int:
    """`cllm train`, alone or as one rank of an MPI launch (``mpiexec -n N cllm train ...``)."""
    from ..distributed.ranks import join
    from .main import as_rank

    # the collectives' timeout is the run's: the option, else --config FILE's [service] step_timeout
    ranks = join(given_values(args).get("step_timeout", BY_NAME["step_timeout"].default))
    if ranks is None:
        return train(args, None)
    configure(args.log_format, args.log_level, rank=ranks.rank)
    return as_rank(ranks, lambda: train(args, ranks))


def train(args, ranks) -> int:
    from ..signals import StopSignals, stop_grace
    from ..training.run import open_run
    from ..training.trainer import run_event_loop
    from .progress import AboveBar, ProgressBar

    rank = None if ranks is None else ranks.rank
    resumed = saved = None
    if args.resume is not None and args.init_from is not None:
        raise UserError("--init-from starts a new run from a model and --resume continues a run; give one of them")
    if args.resume is not None:
        configure(args.log_format, args.log_level, rank=rank)  # passing over a damaged checkpoint is logged
        resumed, saved = load_run(args.resume, ranks)
    config = config_from(args, resumed, saved)
    if ranks is not None:
        ranks.run_sync("the comparison of the ranks' settings", ranks.same_everywhere,
                       json.dumps(resumable(config), sort_keys=True).encode(), "settings")
    as_json = configure(args.log_format, args.log_level, rank=rank)
    progress = ProgressBar if not as_json and sys.stderr.isatty() and rank in (None, 0) else None
    if progress:
        configure(args.log_format, args.log_level, stream=AboveBar(sys.stdout), rank=rank)
        if args.log_interval is None:  # the bar shows every step; --log-interval adds step events above it
            config = with_values(config, {"log_interval": 0})
    trainer = open_run(config, resumed, saved, progress=progress, overwrite=args.overwrite, ranks=ranks)

    async def training():
        with StopSignals(trainer.request_stop, stop_grace(config.step_timeout)):
            return await trainer.run()

    run_event_loop(training())
    if not as_json and rank in (None, 0):
        print(next_commands(config.checkpoints.dir))
    return 0


def load_run(path: Path, ranks) -> tuple:
    """The checkpoint ``--resume`` names and its training state; over MPI ranks, rank 0 reads them and sends
    them to every rank (the run directory need not be on every machine)."""
    from ..checkpoints.store import load_checkpoint, load_training_state

    loaded = None
    if ranks is None or ranks.is_root:
        resumed = load_checkpoint(path)
        loaded = resumed, load_training_state(resumed.path)
    if ranks is not None:
        loaded = ranks.run_sync("rank 0's checkpoint", ranks.comm.bcast, loaded, 0)
    return loaded


def next_commands(run_dir: Path) -> str:
    """What a person may run next on the run just trained, shown after a run on a terminal."""
    where = shlex.quote(str(run_dir))
    return (f"Sample from it: cllm generate {where} --prompt 'The '\n"
            f"Plot its loss:  cllm plot {where}    (or cllm plot --terminal {where})")
