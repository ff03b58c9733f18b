"""Generation with a key-value cache: CLLM's ``generate_ids`` (what ``cllm generate`` runs) against
a PyTorch loop with a key-value cache (benchmarks/torch_gpt.py), greedy, on the same threads.

    python benchmarks/generate_speed.py
    python benchmarks/generate_speed.py --models "GPT-2 124M" --prompt 1000 --new 24 --threads 2

Two shapes: the 5.3 M model of the training benchmark (embed 256, 4 layers, 8 heads, vocab
8192, context 128) and GPT-2 124M (embed 768, 12 layers, 12 heads, vocab 50257, context 1024),
random weights. Each run: a prompt of --prompt tokens (16), then --new tokens; tokens/s counts
the new tokens over the whole run, and "first s" is a separate run's time to its first new
token (the prompt's pass through the model). Each run is its own process, CLLM and PyTorch
alternating; each figure is the best of --repeat runs, so that a burst of other work on a
shared machine does not decide a ratio.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = {"5.3M": (256, 4, 8, 8192, 128), "GPT-2 124M": (768, 12, 12, 50257, 1024)}


def cllm(shape: str, threads: int, prompt_length: int, new: int) -> dict:
    import numpy as np
    from threadpoolctl import threadpool_limits

    from cllm.coord.inference.sampling import SamplingConfig, generate_ids
    from cllm.kernels.inference import KVCache
    from cllm.kernels.model import GPTConfig, ParamLayout, init_params

    C, L, H, V, block = SHAPES[shape]
    cfg = GPTConfig(vocab_size=V, block_size=block, n_layer=L, n_head=H, n_embd=C)
    w = ParamLayout(cfg).tensors(init_params(cfg, seed=0))
    prompt = np.random.default_rng(0).integers(0, V, prompt_length).astype(np.int32)

    def run(n_new: int) -> tuple[int, float]:
        start = time.perf_counter()
        n = len(list(generate_ids(w, KVCache(cfg), prompt, SamplingConfig(max_new_tokens=n_new, temperature=0.0))))
        return n, time.perf_counter() - start

    with threadpool_limits(threads, "blas"):
        run(4)  # compile
        n, seconds = run(new)
        first = run(1)[1]
    return {"tokens_per_s": n / seconds, "first_s": first}


def torch_loop(shape: str, threads: int, prompt_length: int, new: int) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from torch_gpt import TorchGPT

    C, L, H, V, block = SHAPES[shape]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = TorchGPT(V, block, L, H, C).eval()
    prompt = torch.randint(0, V, (prompt_length,))

    def run(n_new: int) -> tuple[int, float]:
        start = time.perf_counter()
        n = len(model.generate(prompt, n_new, block))
        return n, time.perf_counter() - start

    run(4)
    n, seconds = run(new)
    first = run(1)[1]
    return {"tokens_per_s": n / seconds, "first_s": first}


def child(kind: str, shape: str, threads: int, prompt_length: int, new: int) -> dict:
    cmd = [sys.executable, __file__, "--one", kind, shape, str(threads), str(prompt_length), str(new)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens (default: %(default)s)")
    p.add_argument("--new", type=int, default=100, help="new tokens per run (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each figure, the best kept (default: %(default)s)")
    p.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        kind, shape, *numbers = args.one
        print(json.dumps({"cllm": cllm, "torch": torch_loop}[kind](shape, *map(int, numbers))))
        return 0
    for shape in args.models:
        if args.prompt < 1 or args.prompt + args.new > SHAPES[shape][4]:
            p.error(f"--prompt {args.prompt} and --new {args.new} must fit {shape}'s context of {SHAPES[shape][4]}, "
                    f"with a prompt of at least 1 token")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"prompt {args.prompt} tokens, {args.new} new tokens, greedy, random weights; best of {args.repeat} runs")
    print(f"{'model':>11} {'threads':>7} {'CLLM tok/s':>11} {'torch tok/s':>12} {'ratio':>6} "
          f"{'CLLM first s':>13} {'torch first s':>14}")
    for shape in args.models:
        for threads in args.threads:
            runs = [(child("cllm", shape, threads, args.prompt, args.new),
                     child("torch", shape, threads, args.prompt, args.new)) for _ in range(args.repeat)]
            ours, theirs = (max(r[i]["tokens_per_s"] for r in runs) for i in (0, 1))
            first_ours, first_theirs = (min(r[i]["first_s"] for r in runs) for i in (0, 1))
            print(f"{shape:>11} {threads:>7} {ours:>11.1f} {theirs:>12.1f} {ours / theirs:>6.2f} "
                  f"{first_ours:>13.3f} {first_theirs:>14.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
