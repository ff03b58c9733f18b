"""Fine-tuning GPT-2 small: CLLM (`cllm train --init-from`) against PyTorch eager fp32.

A GPT-2 small with random weights (GPT2Config's defaults: 124M parameters, 12 layers, 768
wide, 50,257 ids, 1,024 positions) is saved with transformers into a temporary directory,
beside a byte-level BPE of GPT-2's size trained here (nothing is downloaded). Each
measurement runs in its own process on tinyshakespeare with the same shapes: a step is
``--tokens-per-step`` tokens, cut into sequences of each context length. CLLM runs
``--threads`` workers; PyTorch runs GPT2LMHeadModel (its default attention, AdamW, no
dropout) with ``torch.set_num_threads(--threads)``. Peak memory is each process's maximum
resident set. CLLM with 1 and 3 workers is measured too, for the memory a worker adds.
The last column is the CPU time other processes took meanwhile (a shared machine disturbs
the figures; run it when that is near 0).

    python benchmarks/finetune_gpt2.py --contexts 256 1024 --threads 2 --steps 3 --warmup 2
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens-per-step", type=int, default=2048)
    p.add_argument("--steps", type=int, default=3, help="measured steps, after --warmup unmeasured ones")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--memory-threads", type=int, nargs="*", default=[1, 3],
                   help="other worker counts CLLM runs at the first context, for the memory a worker adds")
    p.add_argument("--data", type=Path, default=SHAKESPEARE)
    p.add_argument("--torch", type=Path, help=argparse.SUPPRESS)  # run the PyTorch side on this model directory
    p.add_argument("--context", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build_model(directory: Path) -> None:
    """GPT-2 small, random weights, and a GPT-2-sized tokenizer, as transformers saves them."""
    sys.path.insert(0, str(ROOT))
    from tests.coord.hf import gpt2_sized_tokenizer, random_gpt2

    random_gpt2(directory, gpt2_sized_tokenizer(), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def measure_cllm(model: Path, data: Path, context: int, threads: int, args, work: Path) -> dict:
    batch = args.tokens_per_step // context
    command = [sys.executable, "-m", "cllm.coord", "train", data, "--init-from", model, "--seq-len", context,
               "--batch-size", batch, "--threads", threads, "--steps", args.warmup + args.steps, "--log-interval", 1,
               "--eval-interval", 0, "--eval-batches", 1, "--checkpoint-interval", 0,
               "--checkpoint-dir", work / f"run-{context}-{threads}", "--cache-dir", work / "cache",
               "--log-format", "json"]
    out, peak, others = peak_of([str(c) for c in command])
    steps = [e for e in map(json.loads, filter(None, out.splitlines())) if e.get("event") == "step"][args.warmup:]
    step_s = sum(e["step_s"] for e in steps) / len(steps)
    return {"tokens_per_s": batch * context / step_s, "step_s": step_s, "peak_mib": peak, "others_s": others}


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def peak_of(command: list) -> tuple:
    """Run ``command``; (its standard output, its peak resident set in MiB, CPU seconds other processes
    used meanwhile: more than a few means the figures are disturbed)."""
    busy = busy_seconds()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = [], []
    readers = [threading.Thread(target=lambda s=s, b=b: b.append(s.read())) for s, b in
               ((process.stdout, out), (process.stderr, err))]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(process.pid, 0)
    for reader in readers:
        reader.join()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(command)} failed:\n{''.join(err)}")
    others = busy_seconds() - busy - usage.ru_utime - usage.ru_stime
    return "".join(out), usage.ru_maxrss / 1024, others


def measure_torch(model: Path, context: int, args) -> dict:
    out, peak, others = peak_of([sys.executable, __file__, "--torch", str(model), "--context", str(context),
                         "--threads", str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup),
                         "--tokens-per-step",
                         str(args.tokens_per_step), "--data", str(args.data)])
    return {**json.loads(out), "peak_mib": peak, "others_s": others}


def torch_child(args) -> None:
    """The PyTorch side, in its own process: print the mean step time as JSON."""
    import numpy as np
    import torch
    from transformers import GPT2LMHeadModel

    sys.path.insert(0, str(ROOT))
    from cllm.coord.data.tokenizer import load_tokenizer

    torch.set_num_threads(args.threads)
    model = GPT2LMHeadModel.from_pretrained(args.torch).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    tokens = load_tokenizer(args.torch).encode(args.data.read_text()[:2_000_000])
    batch, rng = args.tokens_per_step // args.context, np.random.default_rng(0)
    times = []
    for step in range(args.warmup + args.steps):
        starts = rng.integers(0, len(tokens) - args.context - 1, size=batch)
        rows = torch.tensor(np.stack([tokens[s:s + args.context + 1] for s in starts]).astype(np.int64))
        started = time.perf_counter()
        logits = model(rows[:, :-1]).logits  # the same (B,T) positions and targets as CLLM's
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    step_s = sum(times[args.warmup:]) / args.steps
    print(json.dumps({"tokens_per_s": batch * args.context / step_s, "step_s": step_s}))


def main() -> None:
    args = parse_args()
    if args.torch:
        torch_child(args)
        return
    from cllm.coord.checkpoints.hf import read_config
    from cllm.kernels.model import ParamLayout

    with tempfile.TemporaryDirectory(prefix="cllm-gpt2-") as tmp:
        work = Path(tmp)
        build_model(work / "gpt2")
        parameters = ParamLayout(read_config(work / "gpt2")).size
        rows = []
        for context in args.contexts:
            rows.append(("CLLM", context, args.threads, measure_cllm(work / "gpt2", args.data, context, args.threads,
                                                                     args, work)))
            rows.append(("PyTorch", context, args.threads, measure_torch(work / "gpt2", context, args)))
        for threads in args.memory_threads:
            rows.append(("CLLM", args.contexts[0], threads, measure_cllm(work / "gpt2", args.data, args.contexts[0],
                                                                         threads, args, work)))
    print(f"GPT-2 small ({parameters:,} parameters) fine-tuning, {args.tokens_per_step} tokens per step, "
          f"{args.steps} steps after {args.warmup} warm-up; {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
          f"Python {platform.python_version()}")
    print(f"{'':8} {'context':>7} {'threads':>7} {'tokens/s':>9} {'step s':>8} {'peak MiB':>9} {'others CPU s':>12}")
    for name, context, threads, r in rows:
        print(f"{name:8} {context:7d} {threads:7d} {r['tokens_per_s']:9.1f} {r['step_s']:8.2f} {r['peak_mib']:9.0f} "
              f"{r['others_s']:12.1f}")


if __name__ == "__main__":
    main()
