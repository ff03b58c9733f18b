"""`cllm generate`: stream a sample from a checkpoint."""

import sys
from pathlib import Path

from ..errors import UserError
from .options import count, fraction, positive_int, probability_mass, text


def add_parser(commands) -> None:
    p = commands.add_parser("generate", help="sample text from a checkpoint, streamed as it comes")
    p.add_argument("checkpoint", type=Path, help="a checkpoint directory, or a run directory (its latest)")
    p.add_argument("--prompt", type=text, default="")
    p.add_argument("--max-new-tokens", type=positive_int, default=200, help="(default: %(default)s)")
    p.add_argument("--temperature", type=fraction, default=0.8,
                   help="0: always the likeliest token (default: %(default)s)")
    p.add_argument("--top-k", type=count, default=0, help="sample among the k likeliest (0: all) (default: %(default)s)")
    p.add_argument("--top-p", type=probability_mass, default=1.0,
                   help="sample within this probability mass (default: %(default)s)")
    p.add_argument("--seed", type=count, default=0, help="(default: %(default)s)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end the text before the first TEXT (repeatable); it always ends at the end-of-text token")
    p.set_defaults(run=run)


def run(args) -> int:
    from cllm.kernels.inference import KVCache
    from cllm.kernels.model import ParamLayout

    from ..checkpoints.store import load_checkpoint
    from ..inference.sampling import SamplingConfig, generate_text

    if sys.stdout is None:
        raise UserError("standard output is closed; give the sample somewhere to go (a terminal, a file, a pipe)")
    if "" in args.stop:
        raise UserError("--stop needs a non-empty text")
    checkpoint = load_checkpoint(args.checkpoint)
    config = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, stop=tuple(args.stop))
    checkpoint.tokenizer.encode(args.prompt)  # refuse a prompt the vocabulary cannot spell before printing anything
    out = sys.stdout
    out.write(args.prompt)
    weights = ParamLayout(checkpoint.model).tensors(checkpoint.params)
    for piece in generate_text(weights, KVCache(checkpoint.model), checkpoint.tokenizer, args.prompt, config):
        out.write(piece)
        out.flush()
    out.write("\n")
    return 0
