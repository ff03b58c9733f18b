"""`cllm eval`: loss, perplexity and token accuracy of a checkpoint on a corpus; or its exact match
and F1 on the questions of a SQuAD file."""

import json
import math
import sys
from pathlib import Path

from ..errors import UserError
from ..logs import configure
from ..training.config import DEFAULT_CACHE
from .ctl_view import aligned
from .options import positive_int


def add_parser(commands) -> None:
    p = commands.add_parser("eval", help="loss, perplexity and token accuracy on a corpus, or SQuAD exact match "
                                         "and F1")
    p.add_argument("checkpoint", type=Path, help="a checkpoint directory, or a run directory (its latest)")
    p.add_argument("data", type=Path, nargs="?", help="a text file, a directory tree, a .jsonl file or SQuAD JSON, "
                                                      "read as text")
    p.add_argument("--squad", type=Path, metavar="FILE", help="answer the questions of this SQuAD v1.1/v2.0 file "
                                                              "and score them (instead of DATA)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object instead of a table")
    text = p.add_argument_group("a corpus")
    text.add_argument("--batch-size", type=positive_int, default=16, help="sequences per batch")
    text.add_argument("--max-batches", type=positive_int, default=50, help="batches scored, spread across the corpus")
    text.add_argument("--split", choices=("all", "val"), default="all",
                      help="all: windows across the whole corpus; val: its validation split only")
    text.add_argument("--include", action="append", help="glob of files to read in a directory (repeatable)")
    text.add_argument("--exclude", action="append", help="glob of files to skip in a directory (repeatable)")
    text.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where tokenized corpora are cached")
    squad = p.add_argument_group("SQuAD")
    squad.add_argument("--max-questions", type=positive_int, metavar="N",
                       help="score the first N questions only (default: all)")
    squad.add_argument("--max-answer-tokens", type=positive_int, default=30, metavar="N",
                       help="the longest answer generated, in tokens")
    squad.add_argument("--predictions", type=Path, metavar="FILE",
                       help="also write the answers as {id: text} JSON, what the official SQuAD scripts read")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..checkpoints.store import load_checkpoint

    if (args.data is None) == (args.squad is None):
        raise UserError("give DATA (a corpus) or --squad FILE (questions), one of them")
    where = args.data or args.squad
    if not where.exists():
        raise UserError(f"{where} does not exist; give a text file, a directory, a .jsonl or SQuAD file")
    if args.squad is not None:
        from ..inference.squad import read_squad
        questions = read_squad(args.squad)[:args.max_questions]  # a bad file is refused before loading
    checkpoint = load_checkpoint(args.checkpoint)
    configure("json", "warning", stream=sys.stderr)
    if args.squad is not None:
        figures = squad_figures(args, checkpoint, questions)
    else:
        figures = corpus_figures(args, checkpoint)
    print(json.dumps(figures) if args.json else table(figures))
    return 0


def corpus_figures(args, checkpoint) -> dict:
    from ..data.dataset import prepare_dataset
    from ..inference.evaluate import evaluate_checkpoint

    tokenizer = checkpoint.tokenizer
    dataset = prepare_dataset(args.data, tokenizer.kind, tokenizer.vocab_size, args.cache_dir,
                              include=tuple(args.include or ()), exclude=tuple(args.exclude or ()),
                              val_fraction=0.1 if args.split == "val" else 0.0, tokenizer=tokenizer)
    loss, accuracy, tokens = evaluate_checkpoint(checkpoint.model, checkpoint.params, dataset, args.batch_size,
                                                 args.max_batches, args.split)
    return {"checkpoint": str(checkpoint.path), "data": str(args.data), "tokens": tokens, "loss": round(loss, 6),
            "perplexity": round(math.exp(min(loss, 700.0)), 4), "accuracy": round(accuracy, 6)}


def squad_figures(args, checkpoint, questions: list) -> dict:
    from cllm.kernels.inference import KVCache
    from cllm.kernels.model import ParamLayout

    from ..files import write_atomically
    from ..inference.squad import answer, score

    weights = ParamLayout(checkpoint.model).tensors(checkpoint.params)
    cache = KVCache(checkpoint.model)
    predictions = {q.id: answer(weights, cache, checkpoint.tokenizer, q, args.max_answer_tokens) for q in questions}
    if args.predictions is not None:
        try:
            write_atomically(args.predictions, json.dumps(predictions, indent=1, ensure_ascii=False))
        except OSError as error:
            raise UserError(f"cannot write {args.predictions}: {error.strerror}; give a writable path") from None
    return {"checkpoint": str(checkpoint.path), "squad": str(args.squad), **score(questions, predictions)}


def table(figures: dict) -> str:
    """The figures for reading: a corpus's as aligned lines, SQuAD's as a table of questions, EM and F1."""
    head = [("checkpoint", figures["checkpoint"]), ("data", figures.get("data") or figures.get("squad"))]
    if "f1" not in figures:
        rows = head + [("tokens", f"{figures['tokens']:,}"), ("loss", f"{figures['loss']:.4f}"),
                       ("perplexity", f"{figures['perplexity']:.2f}"),
                       ("accuracy", f"{100 * figures['accuracy']:.2f}%")]
        return aligned(rows)
    groups = [("all", figures)] + [(name, figures[name]) for name in ("answerable", "unanswerable") if name in figures]
    lines = [f"{label}: {value}" for label, value in head]
    lines.append(f"{'':<12}  {'questions':>9}  {'exact match':>11}  {'F1':>6}")
    lines += [f"{name:<12}  {g['questions']:>9,}  {g['exact_match']:>11.2f}  {g['f1']:>6.2f}" for name, g in groups]
    return "\n".join(lines)
