"""`cllm generate`: stream samples from a checkpoint."""

import sys
from pathlib import Path

from ..errors import UserError
from .options import count, fraction, positive_int, probability_mass, text

SEPARATOR = "-" * 40  # between samples when there are several


def add_parser(commands) -> None:
    p = commands.add_parser("generate", help="sample text from a checkpoint, streamed as it comes")
    p.add_argument("checkpoint", type=Path, help="a checkpoint directory, or a run directory (its latest)")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", type=text, default="", help="the text the sample continues (default: none, a new document)")
    prompt.add_argument("--prompt-file", type=Path, metavar="FILE",
                        help="read the prompt from a UTF-8 file ('-': standard input)")
    p.add_argument("--num-samples", type=positive_int, default=1, metavar="N",
                   help="samples to draw, the i-th with seed + i, separated by a line of dashes")
    p.add_argument("--max-new-tokens", type=positive_int, default=200, help="tokens to generate per sample")
    p.add_argument("--temperature", type=fraction, default=0.8, help="0: always the likeliest token")
    p.add_argument("--top-k", type=count, default=0, help="sample among the k likeliest (0: all)")
    p.add_argument("--top-p", type=probability_mass, default=1.0, help="sample within this probability mass")
    p.add_argument("--seed", type=count, default=0, help="seeds the sampling; the same seed gives the same text")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end the text before the first TEXT (repeatable); it always ends at the end-of-text token")
    p.set_defaults(run=run)


def read_prompt(path: Path) -> str:
    try:
        data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read the prompt file {path}: {error.strerror}; give a readable text file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"the prompt file {path} is not UTF-8 text (byte {data[error.start]:#04x} at offset "
                        f"{error.start}); save it as UTF-8") from None


def run(args) -> int:
    from dataclasses import replace

    from cllm.kernels.inference import KVCache
    from cllm.kernels.model import ParamLayout

    from ..checkpoints.store import load_checkpoint
    from ..inference.sampling import SamplingConfig, generate_text

    if sys.stdout is None:
        raise UserError("standard output is closed; give the sample somewhere to go (a terminal, a file, a pipe)")
    if "" in args.stop:
        raise UserError("--stop needs a non-empty text")
    prompt = read_prompt(args.prompt_file) if args.prompt_file is not None else args.prompt
    checkpoint = load_checkpoint(args.checkpoint)
    config = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, stop=tuple(args.stop))
    checkpoint.tokenizer.encode(prompt)  # refuse a prompt the vocabulary cannot spell before printing anything
    out = sys.stdout
    weights = ParamLayout(checkpoint.model).tensors(checkpoint.params)
    cache = KVCache(checkpoint.model)
    for i in range(args.num_samples):
        if i:
            out.write(SEPARATOR + "\n")
        out.write(prompt)
        for piece in generate_text(weights, cache, checkpoint.tokenizer, prompt, replace(config, seed=args.seed + i)):
            out.write(piece)
            out.flush()
        out.write("\n")
    return 0
