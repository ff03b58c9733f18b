"""The ``cllm`` command line."""

import argparse
import os
import sys
from pathlib import Path

import structlog

from .errors import UserError
from .logs import configure

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cllm"


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line and exit status 2."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message} (see '{self.prog} --help')")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive finite number")
    return value


def add_train(commands) -> None:
    from .node_zero import usable_cores

    p = commands.add_parser("train", help="train a model on a text corpus")
    p.add_argument("data", nargs="?", type=Path,
                   help="a text file, a directory tree, a .jsonl file or SQuAD JSON; default: the Python standard "
                        "library's own source")
    p.add_argument("--tokenizer", choices=("char", "bpe"), default="char")
    p.add_argument("--vocab-size", type=positive_int, default=8192, help="BPE vocabulary size (bpe only)")
    p.add_argument("--embed-dim", type=positive_int, default=128)
    p.add_argument("--num-layers", type=positive_int, default=4)
    p.add_argument("--num-heads", type=positive_int, default=4)
    p.add_argument("--seq-len", type=positive_int, default=64)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--learning-rate", type=positive_float, default=1e-3)
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help="optimizer steps (default 300)")
    length.add_argument("--epochs", type=positive_int, help="passes over the training split")
    p.add_argument("--threads", type=positive_int, default=usable_cores(),
                   help="worker threads (default: the cores this process may use)")
    p.add_argument("--checkpoint-dir", type=Path, default=Path("runs/cllm"))
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--eval-interval", type=int, default=0, help="steps between validation passes (0: at the end)")
    p.add_argument("--include", action="append", default=[], help="glob of files to read in a directory (repeatable)")
    p.add_argument("--exclude", action="append", default=[], help="glob of files to skip in a directory (repeatable)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where tokenized corpora are cached")
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto",
                   help="auto: JSON lines unless standard output is a terminal")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.set_defaults(run=run_train)


def run_train(args) -> int:
    from cllm.kernels.model import GPTConfig

    from .dataset import prepare_dataset
    from .progress import ProgressBar
    from .train import TrainConfig, check_memory, run_event_loop, train

    if args.embed_dim % args.num_heads:
        raise UserError(f"--embed-dim {args.embed_dim} is not divisible by --num-heads {args.num_heads}; "
                        "choose sizes where it is (e.g. --embed-dim 128 --num-heads 4)")
    if args.eval_interval < 0:
        raise UserError("--eval-interval must be 0 or positive")
    if args.data is not None and not args.data.exists():
        raise UserError(f"{args.data} does not exist; give a text file, a directory, a .jsonl or SQuAD file")
    as_json = configure(args.log_format, args.log_level)
    dataset = prepare_dataset(args.data, args.tokenizer, args.vocab_size, args.cache_dir,
                              include=tuple(args.include), exclude=tuple(args.exclude))
    dataset.validate_seq_len(args.seq_len)
    steps = args.steps or 300
    if args.epochs:
        steps = args.epochs * dataset.steps_per_epoch(args.batch_size, args.seq_len)
    model = GPTConfig(vocab_size=dataset.tokenizer.vocab_size, block_size=args.seq_len, n_layer=args.num_layers,
                      n_head=args.num_heads, n_embd=args.embed_dim)
    check_memory(model, args.batch_size, args.seq_len, args.threads)
    config = TrainConfig(batch_size=args.batch_size, seq_len=args.seq_len, learning_rate=args.learning_rate,
                         steps=steps, threads=args.threads, seed=args.seed, eval_interval=args.eval_interval,
                         log_interval=10 if as_json else 0)
    progress = ProgressBar(steps) if not as_json and sys.stderr.isatty() else None
    run_event_loop(train(model, config, dataset, args.checkpoint_dir, progress))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cllm", description="Train GPT-style language models on CPUs.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_train(commands)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except UserError as error:
        print(f"cllm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        structlog.get_logger("cllm").warning("interrupted")
        return 130
