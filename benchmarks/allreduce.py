"""The gradient Allreduce between MPI ranks: latency, bandwidth, its share of a step, and a scaling model.

    python benchmarks/allreduce.py                 # starts itself under mpiexec -n 2
    python benchmarks/allreduce.py --gpt2          # also GPT-2 124M's step and gradient

On this machine's ranks it measures the Allreduce of buffers from 4 bytes to 64 MiB, the
gradient of the configuration (embed 256, layers 4, heads 8, seq 128, vocab 8192) whole,
through CLLM's Ranks (communication thread, event loop, timeout) and in layer buckets, each
rank's forward and backward of its share of the batch on one thread, the optimizer update,
and what overlapping the Allreduce with that computation gains. From the measured compute
time it models N nodes joined by a 10 or 25 Gbit/s network, ring Allreduce:
2·(N−1)/N·bytes/bandwidth + 2·(N−1)·latency.
"""

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

CONFIGS = {  # name: (vocab, seq, layers, heads, embed, sequences per node per step)
    "embed 256, 4 layers": (8192, 128, 4, 8, 256, 32),
    "GPT-2 124M": (50257, 1024, 12, 12, 768, 8),
}
NODES = (2, 4, 8, 16, 64)
GBITS = (10, 25)
HOP_LATENCY_S = 25e-6  # one message between nodes over TCP on 10-25 GbE; an assumption, not a measurement here


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--gpt2", action="store_true", help="also measure GPT-2 124M (about a minute, 3 GiB a rank)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def best_time(fn, reps: int) -> float:
    """The fastest of ``reps`` calls: the machine is shared, and the least disturbed call is the figure."""
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def model_parts(name: str):
    from cllm.kernels.model import GPTConfig, ParamLayout, init_params

    vocab, seq, layers, heads, embed, per_node = CONFIGS[name]
    cfg = GPTConfig(vocab_size=vocab, block_size=seq, n_layer=layers, n_head=heads, n_embd=embed)
    layout = ParamLayout(cfg)
    return cfg, layout, init_params(cfg, seed=0), per_node


def compute_time(name: str, rows: int, reps: int) -> tuple:
    """(forward+backward of ``rows`` sequences on one thread, AdamW update of every parameter on one thread)."""
    from cllm.coord.nodezero.worker import WorkerKernels
    from cllm.coord.training.optimizer import Optimizer, OptimizerConfig

    cfg, layout, params, _ = model_parts(name)
    grad = np.zeros(layout.size, dtype=np.float32)
    worker = WorkerKernels(cfg, 0)
    grads = layout.tensors(grad)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (rows, cfg.block_size + 1)).astype(np.int32)
    x, y = tokens[:, :-1].copy(), tokens[:, 1:].copy()
    weights = layout.tensors(params)
    worker.train(weights, grads, x, y, 1.0 / x.size)  # compiles, allocates
    compute = best_time(lambda: worker.train(weights, grads, x, y, 1.0 / x.size), reps)
    optimizer = Optimizer(layout, OptimizerConfig())
    pieces = optimizer.plan(1)[0]

    def update():
        optimizer.step += 1
        optimizer.update_slice(params, grad * 0.0, pieces, 1e-9, 1.0)
    update()
    return compute, best_time(update, reps), layout.size


def child(args) -> None:
    from mpi4py import MPI
    from threadpoolctl import threadpool_limits

    from cllm.coord.distributed.decision import WORDS
    from cllm.coord.distributed.ranks import Ranks, layer_buckets

    comm = MPI.COMM_WORLD
    out = {"ranks": comm.size, "sizes": {}}
    for floats in (1, 256, 4096, 65536, 1 << 20, 1 << 22, 1 << 24):
        buffer = np.ones(floats, dtype=np.float32)
        comm.Barrier()
        out["sizes"][4 * floats] = best_time(lambda: comm.Allreduce(MPI.IN_PLACE, buffer), 20 if floats < 1 << 22
                                                else 5)

    name = "embed 256, 4 layers"
    cfg, layout, _, per_node = model_parts(name)
    buffer = np.ones(layout.size + WORDS, dtype=np.float32)
    comm.Barrier()
    out["direct"] = best_time(lambda: comm.Allreduce(MPI.IN_PLACE, buffer), 20)

    async def through_ranks():
        ranks = Ranks(MPI, comm, timeout=60.0)
        ranks.start()
        results = {}
        for what in ("whole", "buckets"):
            times = []
            for _ in range(20):
                await ranks.run("a barrier", ranks.barrier)
                started = time.perf_counter()
                if what == "whole":
                    await ranks.allreduce(buffer, "the gradient")
                else:
                    await ranks.buckets(buffer, layer_buckets(layout, WORDS), "the gradient").wait()
                times.append(time.perf_counter() - started)
            results[what] = min(times)
        # overlap: one rank's share of the step computed while the gradient travels, against one after the other
        from cllm.coord.nodezero.worker import WorkerKernels
        rows = per_node // comm.size
        _, layout_, params, _ = model_parts(name)
        worker = WorkerKernels(cfg, 0)
        grads = layout_.tensors(np.zeros(layout_.size, dtype=np.float32))
        rng = np.random.default_rng(comm.rank)
        tokens = rng.integers(0, cfg.vocab_size, (rows, cfg.block_size + 1)).astype(np.int32)
        x, y = tokens[:, :-1].copy(), tokens[:, 1:].copy()
        weights = layout_.tensors(params)
        pool = ThreadPoolExecutor(1)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(pool, worker.train, weights, grads, x, y, 1.0)
        timed = {key: [] for key in ("compute", "allreduce", "sequential", "compute_beside", "overlapped")}

        async def clock(awaitable):
            await awaitable
            return time.perf_counter()
        for _ in range(6):  # the two ways alternate, so that a busy moment of the machine hits both
            await ranks.run("a barrier", ranks.barrier)
            started = time.perf_counter()
            await loop.run_in_executor(pool, worker.train, weights, grads, x, y, 1.0)
            computed = time.perf_counter()
            await ranks.allreduce(buffer, "the gradient")
            ended = time.perf_counter()
            timed["compute"].append(computed - started)
            timed["allreduce"].append(ended - computed)
            timed["sequential"].append(ended - started)
            await ranks.run("a barrier", ranks.barrier)
            started = time.perf_counter()
            computed, reduced = await asyncio.gather(clock(loop.run_in_executor(pool, worker.train, weights, grads, x, y, 1.0)),
                                                     clock(ranks.allreduce(buffer, "the gradient")))
            timed["compute_beside"].append(computed - started)
            timed["overlapped"].append(max(computed, reduced) - started)
        results.update({key: min(values) for key, values in timed.items()})
        ranks.close()
        return results

    with threadpool_limits(1, user_api="blas"):
        out.update(asyncio.run(through_ranks()))
        out["configs"] = {}
        names = list(CONFIGS) if args.gpt2 else [name]
        for config in names:
            rows = CONFIGS[config][5] // 2  # a node of this machine's 2 cores: half the node's batch on each
            comm.Barrier()
            compute, update, n = compute_time(config, rows, 3 if config == name else 1)
            grad = np.ones(n, dtype=np.float32)
            comm.Barrier()
            allreduce = best_time(lambda: comm.Allreduce(MPI.IN_PLACE, grad), 5 if config == name else 2)
            out["configs"][config] = {"rows_per_core": rows, "compute_s": compute, "update_s": update,
                                      "parameters": n, "allreduce_s": allreduce}
    if comm.rank == 0:
        print(json.dumps(out))


def ring_seconds(nodes: int, nbytes: float, gbits: float) -> float:
    return 2 * (nodes - 1) / nodes * nbytes / (gbits * 1e9 / 8) + 2 * (nodes - 1) * HOP_LATENCY_S


def report(out: dict) -> None:
    n = out["ranks"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, {n} ranks on this machine (shared memory)")
    print("\nAllreduce (sum, float32, in place), best of several:")
    print(f"{'bytes':>12} {'time':>11} {'bus GB/s':>9}")
    for nbytes, seconds in out["sizes"].items():
        bus = 2 * (n - 1) / n * int(nbytes) / seconds / 1e9
        print(f"{int(nbytes):>12,} {seconds * 1e6:>9.1f}us {bus:>9.2f}")
    c = out["configs"]["embed 256, 4 layers"]
    grad_mb = 4 * c["parameters"] / 2**20
    print(f"\nthe gradient of embed 256, layers 4, heads 8, seq 128, vocab 8192: {c['parameters']:,} parameters, "
          f"{grad_mb:.1f} MiB")
    print(f"  MPI_Allreduce called directly     {out['direct'] * 1e3:7.2f} ms")
    print(f"  through Ranks, whole              {out['whole'] * 1e3:7.2f} ms")
    print(f"  through Ranks, in layer buckets   {out['buckets'] * 1e3:7.2f} ms")
    step = c["compute_s"] + out["whole"] + c["update_s"]
    print(f"  one rank's step, batch 32 over {n} ranks x 1 thread: forward+backward {c['compute_s']:.3f} s, "
          f"Allreduce {out['whole'] * 1e3:.1f} ms, update {c['update_s'] * 1e3:.1f} ms: the Allreduce is "
          f"{100 * out['whole'] / step:.2f}% of the step")
    print(f"  overlap, one rank's forward+backward and the gradient's Allreduce: one after the other "
          f"{out['compute']:.3f} + {out['allreduce'] * 1e3:.1f} ms = {out['sequential']:.3f} s; at once "
          f"{out['overlapped']:.3f} s (forward+backward {out['compute_beside']:.3f} s beside the Allreduce)")
    print(f"\nscaling model: N nodes like this one (2 cores: 1 rank x 2 threads), each computing the same batch per "
          f"step,\nring Allreduce 2(N-1)/N*bytes/bandwidth + 2(N-1)*{HOP_LATENCY_S * 1e6:.0f}us, no overlap")
    for name, c in out["configs"].items():
        node_s = c["compute_s"] + c["update_s"] / 2  # both cores compute their rows; the update is split in two
        nbytes = 4 * c["parameters"]
        seqs = CONFIGS[name][5]
        tokens = seqs * CONFIGS[name][1]
        print(f"\n{name}: {c['parameters']:,} parameters ({nbytes / 2**20:.0f} MiB of gradient), {seqs} sequences of "
              f"{CONFIGS[name][1]} per node per step, node step {node_s:.3f} s "
              f"({tokens / node_s:.0f} tokens/s)")
        print(f"{'nodes':>6} " + " ".join(f"{f'{g} Gbit/s: Allreduce':>20} {'tokens/s':>10} {'eff.':>6}" for g in GBITS))
        for nodes in NODES:
            cells = []
            for g in GBITS:
                net = ring_seconds(nodes, nbytes, g)
                cells.append(f"{net * 1e3:>18.1f}ms {nodes * tokens / (node_s + net):>10.0f} "
                             f"{100 * node_s / (node_s + net):>5.1f}%")
            print(f"{nodes:>6} " + " ".join(cells))
        for g in GBITS:
            net = ring_seconds(64, nbytes, g)
            print(f"  at {g} Gbit/s and 64 nodes the network takes as long as the computation once a node is "
                  f"{node_s / net:.0f}x faster than this one")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    mpiexec = Path(sys.executable).parent / "mpiexec"
    cmd = [str(mpiexec if mpiexec.exists() else "mpiexec"), "-n", str(args.ranks), sys.executable, __file__, "--child"]
    run = subprocess.run(cmd + (["--gpt2"] if args.gpt2 else []), capture_output=True, text=True)
    if run.returncode != 0:
        print(run.stdout + run.stderr, file=sys.stderr)
        return run.returncode
    report(json.loads(run.stdout.strip().splitlines()[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
