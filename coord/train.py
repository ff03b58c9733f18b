"""The training loop: get a batch, let Node Zero run the step, log, evaluate, checkpoint."""

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
from threadpoolctl import threadpool_limits

from cllm.kernels.model import GPTConfig, ParamLayout, activation_bytes, init_params

from .checkpoint import save_checkpoint
from .errors import UserError
from .node_zero import NodeZero
from .optimizer import Optimizer, OptimizerConfig

log = structlog.get_logger("cllm.train")


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 16
    seq_len: int = 64
    learning_rate: float = 1e-3
    steps: int = 500
    threads: int = 1
    seed: int = 1337
    clip_norm: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.0
    eval_interval: int = 0  # 0: evaluate only at the end
    eval_batches: int = 8
    log_interval: int = 10


def estimate_memory(model: GPTConfig, batch_size: int, seq_len: int, threads: int) -> int:
    """Bytes a run needs: each worker's activations, the parameters, optimizer moments and gradient segments."""
    rows = -(-batch_size // threads)
    n_params = ParamLayout(model).size
    return threads * activation_bytes(model, rows, seq_len) + 4 * n_params * (4 + threads + threads // 12)


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(model: GPTConfig, batch_size: int, seq_len: int, threads: int) -> None:
    needed, available = estimate_memory(model, batch_size, seq_len, threads), available_memory()
    if needed > 0.9 * available:
        raise UserError(f"this model and batch need about {needed / 2**30:.1f} GiB of memory but "
                        f"{available / 2**30:.1f} GiB are available; use a smaller --batch-size, --seq-len or model")


def run_event_loop(coroutine):
    """Run ``coroutine`` on uvloop when it is installed, asyncio's own loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


async def train(model: GPTConfig, config: TrainConfig, dataset, run_dir: Path, progress=None) -> dict:
    """Train ``model`` on ``dataset`` for ``config.steps`` steps; returns the final figures."""
    params = init_params(model, config.seed)
    optimizer = Optimizer(ParamLayout(model), OptimizerConfig(beta1=config.beta1, beta2=config.beta2,
                                                              weight_decay=config.weight_decay))
    node = NodeZero(model, params, optimizer, config.threads)
    val_batches = dataset.val_batches(config.batch_size, config.seq_len, config.eval_batches)
    log.info("train_started", steps=config.steps, batch_size=config.batch_size, seq_len=config.seq_len,
             threads=config.threads, parameters=int(params.size), vocab_size=model.vocab_size,
             train_tokens=dataset.n_train, val_tokens=dataset.n_val)
    with threadpool_limits(1, user_api="blas"):  # the pool is the parallelism; BLAS stays single-threaded
        await node.start()
        try:
            summary = await loop_steps(node, config, dataset, val_batches, progress)
        finally:
            await node.close()
    path = save_checkpoint(run_dir, config.steps, model, params, dataset.tokenizer,
                           {"step": np.int64(config.steps)})
    log.info("checkpoint_saved", path=str(path), step=config.steps)
    summary["checkpoint"] = str(path)
    return summary


async def loop_steps(node: NodeZero, config: TrainConfig, dataset, val_batches: list, progress) -> dict:
    started = time.perf_counter()
    tokens_seen = 0
    result = None
    for step in range(1, config.steps + 1):
        x, y = dataset.train_batch(step - 1, config.batch_size, config.seq_len, config.seed)
        result = await node.step(step, [(x, y)], config.learning_rate, config.clip_norm)
        tokens_seen += result.tokens
        tokens_per_s = result.tokens / result.seconds
        if progress is not None:
            progress.update(step, result.loss, tokens_per_s)
        if step == 1 or step % config.log_interval == 0 or step == config.steps:
            log.info("step", step=step, loss=round(result.loss, 6), lr=config.learning_rate,
                     grad_norm=round(result.grad_norm, 6), tokens_per_s=round(tokens_per_s, 1),
                     step_s=round(result.seconds, 4))
        if config.eval_interval and step % config.eval_interval == 0 and step != config.steps:
            val_loss = await node.evaluate(val_batches)
            log.info("eval", step=step, val_loss=round(val_loss, 6))
    if progress is not None:
        progress.close()
    val_loss = await node.evaluate(val_batches)
    elapsed = time.perf_counter() - started
    log.info("train_finished", step=config.steps, loss=round(result.loss, 6), val_loss=round(val_loss, 6),
             seconds=round(elapsed, 2), tokens_per_s=round(tokens_seen / elapsed, 1))
    return {"loss": result.loss, "val_loss": val_loss, "seconds": elapsed, "tokens_per_s": tokens_seen / elapsed}
