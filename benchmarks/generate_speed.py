"""Generation with a key-value cache: CLLM's ``generate_ids`` (what ``cllm generate`` runs) against
a PyTorch loop with a key-value cache (benchmarks/torch_gpt.py), greedy, on the same threads.

    python benchmarks/generate_speed.py

Two shapes: the 5.3 M model of the training benchmark (embed 256, 4 layers, 8 heads, vocab
8192, context 128) and GPT-2 124M (embed 768, 12 layers, 12 heads, vocab 50257, context 1024),
random weights. Each run: a prompt of 16 tokens, then NEW tokens; tokens/s counts new tokens.
Each run is its own process, CLLM and PyTorch alternating; each figure is the best of --repeat
runs, so that a burst of other work on a shared machine does not decide a ratio.
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
PROMPT = 16


def cllm(shape: str, threads: int, new: int) -> float:
    import numpy as np
    from threadpoolctl import threadpool_limits

    from cllm.coord.inference.sampling import SamplingConfig, generate_ids
    from cllm.kernels.inference import KVCache
    from cllm.kernels.model import GPTConfig, ParamLayout, init_params

    C, L, H, V, block = SHAPES[shape]
    cfg = GPTConfig(vocab_size=V, block_size=block, n_layer=L, n_head=H, n_embd=C)
    w = ParamLayout(cfg).tensors(init_params(cfg, seed=0))
    prompt = np.random.default_rng(0).integers(0, V, PROMPT).astype(np.int32)
    config = SamplingConfig(max_new_tokens=new, temperature=0.0)
    with threadpool_limits(threads, "blas"):
        list(generate_ids(w, KVCache(cfg), prompt, SamplingConfig(max_new_tokens=4, temperature=0.0)))  # compile
        start = time.perf_counter()
        n = len(list(generate_ids(w, KVCache(cfg), prompt, config)))
    return n / (time.perf_counter() - start)


def torch_loop(shape: str, threads: int, new: int) -> float:
    import torch

    sys.path.insert(0, str(HERE))
    from torch_gpt import TorchGPT

    C, L, H, V, block = SHAPES[shape]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = TorchGPT(V, block, L, H, C).eval()
    prompt = torch.randint(0, V, (PROMPT,))
    model.generate(prompt, 4, block)
    start = time.perf_counter()
    n = len(model.generate(prompt, new, block))
    return n / (time.perf_counter() - start)


def child(kind: str, shape: str, threads: int, new: int) -> float:
    cmd = [sys.executable, __file__, "--one", kind, shape, str(threads), str(new)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--new", type=int, default=100, help="new tokens per run (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each figure, the best kept (default: %(default)s)")
    p.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        kind, shape, threads, new = args.one
        print(json.dumps({"cllm": cllm, "torch": torch_loop}[kind](shape, int(threads), int(new))))
        return 0
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"prompt {PROMPT} tokens, {args.new} new tokens, greedy, random weights; best of {args.repeat} runs")
    print(f"{'model':>11} {'threads':>7} {'CLLM tok/s':>11} {'torch tok/s':>12} {'ratio':>6}")
    for shape in SHAPES:
        for threads in args.threads:
            runs = [(child("cllm", shape, threads, args.new), child("torch", shape, threads, args.new))
                    for _ in range(args.repeat)]
            ours, theirs = max(r[0] for r in runs), max(r[1] for r in runs)
            print(f"{shape:>11} {threads:>7} {ours:>11.1f} {theirs:>12.1f} {ours / theirs:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
