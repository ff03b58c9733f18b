"""`cllm eval`: loss and perplexity of a checkpoint on a corpus."""

import json
import math
import sys
from pathlib import Path

from ..errors import UserError
from ..logs import configure
from ..training.config import DEFAULT_CACHE
from .options import positive_int


def add_parser(commands) -> None:
    p = commands.add_parser("eval", help="loss and perplexity of a checkpoint on a corpus")
    p.add_argument("checkpoint", type=Path, help="a checkpoint directory, or a run directory (its latest)")
    p.add_argument("data", type=Path, help="a text file, a directory tree, a .jsonl file or SQuAD JSON")
    p.add_argument("--batch-size", type=positive_int, default=16, help="sequences per batch")
    p.add_argument("--max-batches", type=positive_int, default=50, help="batches scored, spread across the corpus")
    p.add_argument("--split", choices=("all", "val"), default="all",
                   help="all: windows across the whole corpus; val: its validation split only")
    p.add_argument("--include", action="append", help="glob of files to read in a directory (repeatable)")
    p.add_argument("--exclude", action="append", help="glob of files to skip in a directory (repeatable)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                   help="where tokenized corpora are cached")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..checkpoints.store import load_checkpoint
    from ..data.dataset import prepare_dataset
    from ..inference.evaluate import evaluate_checkpoint

    if not args.data.exists():
        raise UserError(f"{args.data} does not exist; give a text file, a directory, a .jsonl or SQuAD file")
    checkpoint = load_checkpoint(args.checkpoint)
    configure("json", "warning", stream=sys.stderr)
    tokenizer = checkpoint.tokenizer
    dataset = prepare_dataset(args.data, tokenizer.kind, tokenizer.vocab_size, args.cache_dir,
                              include=tuple(args.include or ()), exclude=tuple(args.exclude or ()),
                              val_fraction=0.1 if args.split == "val" else 0.0, tokenizer=tokenizer)
    loss, tokens = evaluate_checkpoint(checkpoint.model, checkpoint.params, dataset, args.batch_size,
                                       args.max_batches, args.split)
    print(json.dumps({"checkpoint": str(checkpoint.path), "data": str(args.data), "tokens": tokens,
                      "loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 700.0)), 4)}))
    return 0
