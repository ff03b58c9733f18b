"""The ``cllm`` command line: train, generate, eval, serve, ctl."""

import argparse
import math
import os
import sys
from pathlib import Path

from ..errors import RunFailed, UserError
from ..logs import configure

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cllm"


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line and exit status 2."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message} (see '{self.prog} --help')")


def number(kind, low=None, strict=True):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if kind is int else 'number'}") \
                from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} must be a positive finite number")
        if low is not None and (value <= low if strict else value < low):
            raise argparse.ArgumentTypeError(f"{value} must be {'positive' if low == 0 and strict else f'at least {low}'}"
                                             + (" finite number" if kind is float else ""))
        return value
    return parse


positive_int = number(int, 0)
count = number(int, 0, strict=False)
positive_float = number(float, 0)
fraction = number(float, 0, strict=False)


def add_logging(p) -> None:
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto",
                   help="auto: JSON lines unless standard output is a terminal")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")


def add_data(p) -> None:
    p.add_argument("--include", action="append", help="glob of files to read in a directory (repeatable)")
    p.add_argument("--exclude", action="append", help="glob of files to skip in a directory (repeatable)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where tokenized corpora are cached")


def add_train(commands) -> None:
    from ..nodezero.node_zero import usable_cores
    from ..training.run import MODEL_DEFAULTS

    p = commands.add_parser("train", help="train a model on a text corpus")
    p.add_argument("data", nargs="?", type=Path,
                   help="a text file, a directory tree, a .jsonl file or SQuAD JSON; default: the Python standard "
                        "library's own source")
    p.add_argument("--tokenizer", choices=("char", "bpe"), default="char")
    p.add_argument("--vocab-size", type=positive_int, default=8192, help="BPE vocabulary size (bpe only)")
    for name, default in MODEL_DEFAULTS.items():
        p.add_argument("--" + name.replace("_", "-"), type=positive_int, help=f"default {default}")
    p.add_argument("--batch-size", type=positive_int, default=16, help="sequences per micro-step")
    p.add_argument("--grad-accum", type=positive_int, default=1, help="micro-steps per optimizer step")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, default=1000, help="optimizer steps (default 1000)")
    length.add_argument("--epochs", type=positive_int, help="passes over the training split")
    p.add_argument("--threads", type=positive_int, default=usable_cores(),
                   help="worker threads (default: the cores this process may use)")
    p.add_argument("--seed", type=count, default=1337)
    o = p.add_argument_group("optimisation")
    o.add_argument("--optimizer", choices=("adamw", "adam", "sgd"), default="adamw")
    o.add_argument("--learning-rate", type=positive_float, default=1e-3)
    o.add_argument("--beta1", type=fraction, default=0.9, help="Adam's first beta, or SGD's momentum")
    o.add_argument("--beta2", type=fraction, default=0.95)
    o.add_argument("--eps", type=positive_float, default=1e-8)
    o.add_argument("--weight-decay", type=fraction, default=0.0, help="decays linear-layer weights only")
    o.add_argument("--decay-all", action="store_const", const=True, help="decay biases, LayerNorm and embeddings too")
    o.add_argument("--nesterov", action="store_const", const=True, help="Nesterov momentum (sgd)")
    o.add_argument("--clip-norm", type=fraction, default=1.0, help="clip the gradient's global norm (0: off)")
    o.add_argument("--lr-schedule", choices=("constant", "linear", "cosine", "exponential", "cyclical"),
                   default="constant")
    o.add_argument("--warmup-steps", type=count, default=0)
    o.add_argument("--decay-steps", type=positive_int, help="step at which decay reaches --min-lr (default: --steps)")
    o.add_argument("--min-lr", type=fraction, default=0.0)
    o.add_argument("--cycle-steps", type=positive_int, default=500, help="half period of the cyclical schedule")
    e = p.add_argument_group("evaluation and checkpoints")
    e.add_argument("--eval-interval", type=count, default=0, help="steps between validation passes (0: at the end)")
    e.add_argument("--eval-batches", type=positive_int, default=8)
    e.add_argument("--patience", type=count, default=0, help="evaluations without improvement before stopping")
    e.add_argument("--max-bad-steps", type=positive_int, default=5,
                   help="non-finite steps in a row before the run stops")
    e.add_argument("--checkpoint-dir", type=Path, help="default runs/cllm, or the --resume run's directory")
    e.add_argument("--checkpoint-interval", type=count, default=0, help="steps between checkpoints (0: at the end)")
    e.add_argument("--keep-checkpoints", type=positive_int, default=3, help="newest checkpoints kept (and the best)")
    e.add_argument("--resume", type=Path, help="continue a run from its checkpoint directory")
    add_data(p)
    add_logging(p)
    # a resumed run takes these from its checkpoint unless they are given again
    p.set_defaults(run=run_train, run_defaults={key: p.get_default(key) for key in RUN_SETTINGS},
                   **{key: None for key in RUN_SETTINGS})


RUN_SETTINGS = ("data", "include", "exclude", "batch_size", "grad_accum", "steps", "seed", "optimizer", "learning_rate",
                "beta1", "beta2", "eps", "weight_decay", "decay_all", "nesterov", "clip_norm", "lr_schedule",
                "warmup_steps", "decay_steps", "min_lr", "cycle_steps", "eval_interval", "eval_batches", "patience",
                "max_bad_steps", "checkpoint_interval", "keep_checkpoints")


def resolve_settings(args, saved: dict) -> dict:
    """Fill the settings not given on the command line from ``saved`` (a resumed run's), else the defaults;
    returns them as JSON-able values, as the checkpoint keeps them."""
    for key in RUN_SETTINGS:
        if getattr(args, key) is None:
            value = saved.get(key, args.run_defaults[key])
            setattr(args, key, Path(value) if key == "data" and value is not None else value)
    if args.decay_all is None:
        args.decay_all = False
    return {key: getattr(args, key) for key in RUN_SETTINGS}


def run_train(args) -> int:
    from ..checkpoints.store import load_checkpoint, load_training_state
    from .progress import ProgressBar
    from ..training.run import MODEL_DEFAULTS, RunRequest, open_run
    from ..training.trainer import run_event_loop

    resumed = saved = None
    if args.resume is not None:
        resumed = load_checkpoint(args.resume)
        saved = load_training_state(resumed[3])
    epochs = args.epochs if args.steps is None else None
    settings = resolve_settings(args, saved["settings"] if saved else {})
    as_json = configure(args.log_format, args.log_level)
    run_dir = args.checkpoint_dir or (resumed[3].parent if resumed else Path("runs/cllm"))
    request = RunRequest(settings=settings, sizes={name: getattr(args, name) for name in MODEL_DEFAULTS},
                         tokenizer=args.tokenizer, vocab_size=args.vocab_size, cache_dir=args.cache_dir,
                         threads=args.threads, run_dir=run_dir, epochs=epochs)
    progress = ProgressBar if not as_json and sys.stderr.isatty() else None
    trainer = open_run(request, resumed, saved, log_interval=10 if as_json else 0, progress=progress)
    run_event_loop(trainer.run())
    return 0


def add_generate(commands) -> None:
    p = commands.add_parser("generate", help="sample text from a checkpoint, streamed as it comes")
    p.add_argument("checkpoint", type=Path, help="a checkpoint directory, or a run directory (its latest)")
    p.add_argument("--prompt", default="")
    p.add_argument("--max-new-tokens", type=positive_int, default=200)
    p.add_argument("--temperature", type=fraction, default=0.8, help="0: always the likeliest token")
    p.add_argument("--top-k", type=count, default=0, help="sample among the k likeliest (0: all)")
    p.add_argument("--top-p", type=number(float, 0), default=1.0, help="sample within this probability mass")
    p.add_argument("--seed", type=count, default=0)
    p.set_defaults(run=run_generate)


def run_generate(args) -> int:
    from cllm.kernels.inference import KVCache
    from cllm.kernels.model import ParamLayout

    from ..checkpoints.store import load_checkpoint
    from ..inference.sampling import SamplingConfig, generate_text

    if args.top_p > 1:
        raise UserError(f"--top-p {args.top_p} must be at most 1")
    cfg, params, tokenizer, _ = load_checkpoint(args.checkpoint)
    config = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed)
    tokenizer.encode(args.prompt)  # refuse a prompt the vocabulary cannot spell before printing anything
    out = sys.stdout
    out.write(args.prompt)
    for piece in generate_text(ParamLayout(cfg).tensors(params), KVCache(cfg), tokenizer, args.prompt, config):
        out.write(piece)
        out.flush()
    out.write("\n")
    return 0


def add_eval(commands) -> None:
    p = commands.add_parser("eval", help="loss and perplexity of a checkpoint on a corpus")
    p.add_argument("checkpoint", type=Path, help="a checkpoint directory, or a run directory (its latest)")
    p.add_argument("data", type=Path, help="a text file, a directory tree, a .jsonl file or SQuAD JSON")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--max-batches", type=positive_int, default=50)
    p.add_argument("--split", choices=("all", "val"), default="all",
                   help="all: windows across the whole corpus; val: its validation split only")
    add_data(p)
    p.set_defaults(run=run_eval)


def run_eval(args) -> int:
    import json

    from ..checkpoints.store import load_checkpoint
    from ..data.dataset import prepare_dataset
    from ..inference.evaluate import evaluate_checkpoint

    if not args.data.exists():
        raise UserError(f"{args.data} does not exist; give a text file, a directory, a .jsonl or SQuAD file")
    cfg, params, tokenizer, path = load_checkpoint(args.checkpoint)
    configure("json", "warning", stream=sys.stderr)
    dataset = prepare_dataset(args.data, tokenizer.kind, tokenizer.vocab_size, args.cache_dir,
                              include=tuple(args.include or ()), exclude=tuple(args.exclude or ()),
                              val_fraction=0.1 if args.split == "val" else 0.0, tokenizer=tokenizer)
    loss, tokens = evaluate_checkpoint(cfg, params, dataset, args.batch_size, args.max_batches, args.split)
    print(json.dumps({"checkpoint": str(path), "data": str(args.data), "tokens": tokens, "loss": round(loss, 6),
                      "perplexity": round(math.exp(min(loss, 700.0)), 4)}))
    return 0


def add_serve(commands) -> None:
    p = commands.add_parser("serve", help="run the training daemon (systemd service)")
    p.add_argument("--config", type=Path, required=True, help="the TOML configuration (see deploy/cllm.toml)")
    p.set_defaults(run=run_serve)


def run_serve(args) -> int:
    from ..service.daemon import Service
    from ..training.trainer import run_event_loop

    service = Service(args.config)  # refuses a bad configuration before anything starts
    return run_event_loop(service.run())


CTL_COMMANDS = ("status", "pause", "resume", "checkpoint", "stop", "workers", "stats", "jobs", "submit", "cancel")


def add_ctl(commands) -> None:
    p = commands.add_parser("ctl", help="steer a running daemon through its control socket")
    p.add_argument("command", choices=CTL_COMMANDS)
    p.add_argument("argument", nargs="?", help="workers: the count; submit: a job's TOML file; cancel: a job id")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", type=Path, help="the daemon's control socket")
    where.add_argument("--config", type=Path, help="the daemon's configuration, to find its socket")
    p.add_argument("--timeout", type=positive_float, default=900.0, help="seconds to wait for the answer")
    p.set_defaults(run=run_ctl)


def ctl_args(command: str, argument) -> dict:
    import tomllib

    needs = {"workers": "a worker count", "submit": "a job file", "cancel": "a job id"}
    if command not in needs:
        if argument is not None:
            raise UserError(f"'{command}' takes no argument")
        return {}
    if argument is None:
        raise UserError(f"'{command}' needs {needs[command]}")
    if command == "workers":
        if not argument.isdigit() or int(argument) <= 0:
            raise UserError(f"the worker count must be a positive whole number, got {argument!r}")
        return {"count": int(argument)}
    if command == "cancel":
        return {"id": argument}
    try:
        return {"job": tomllib.loads(Path(argument).read_text())}
    except OSError as error:
        raise UserError(f"cannot read {argument}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{argument} is not valid TOML: {error}") from None


def run_ctl(args) -> int:
    import json
    import socket

    from cllm.protocol.control import ControlRequest, decode_reply, encode_request
    from cllm.protocol.wire import WireError

    request = ControlRequest(id=os.getpid(), command=args.command, args=ctl_args(args.command, args.argument))
    if args.socket is not None:
        path = args.socket
    else:
        from ..service.config import load_config
        path = load_config(args.config).service.socket if args.config else load_config_default_socket()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(args.timeout)
        try:
            sock.connect(str(path))
            sock.sendall(encode_request(request))
            reply = sock.makefile("rb").readline()
        except (FileNotFoundError, ConnectionRefusedError):
            raise UserError(f"no daemon answers at {path}; is 'cllm serve' running?") from None
        except TimeoutError:
            raise UserError(f"no answer from {path} within {args.timeout:g}s") from None
        except OSError as error:
            raise UserError(f"cannot talk to {path}: {error.strerror or error}") from None
    body = decode_reply(reply)
    if isinstance(body, WireError) or not reply:
        raise UserError(f"the daemon at {path} sent no valid reply")
    if not body["ok"]:
        print(f"cllm ctl: {args.command} refused: {body['error']['detail']}", file=sys.stderr)
        return 1
    print(json.dumps(body["result"], indent=2))
    return 0


def load_config_default_socket() -> Path:
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return Path(runtime) / "control.sock"
    raise UserError("give --socket or --config to find the daemon's control socket")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cllm", description="Train GPT-style language models on CPUs.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_train(commands)
    add_generate(commands)
    add_eval(commands)
    add_serve(commands)
    add_ctl(commands)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except UserError as error:
        print(f"cllm: error: {error}", file=sys.stderr)
        return 2
    except RunFailed as error:
        print(f"cllm: run failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cllm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
