"""The training loop: batch, boundary, step, record, boundary.

The cursor gives each step's rows and the notices of the stream's boundaries; Node Zero runs
the step; at each boundary the loop acts on the notices (``handle``: epochs, documents and
source files crossed, evaluation and checkpoint intervals) and on control requests (stop,
stats, workers, pause).

Everything a run depends on is a function of the step or lives in the checkpoint (weights,
optimizer moments, best-so-far and patience counters), and batches are a pure function of
(seed, step), so a resumed run continues bit for bit where an uninterrupted one would be.
"""

import asyncio
import dataclasses
import json
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
from threadpoolctl import threadpool_limits

from cllm.kernels.model import GPTConfig, ParamLayout, activation_bytes
from cllm.protocol import payloads as pl
from cllm.protocol.messages import Message, MessageType as M

from ..checkpoints.store import mark_best, prune_checkpoints, save_checkpoint
from ..distributed.decision import Decision
from ..errors import OperationalError, RunFailed, UserError
from .hooks import Hook, Hooks
from ..nodezero.node_zero import NodeZero, StepFailed
from ..nodezero.states import ControlState
from .config import RunConfig, resumable, with_values
from .cursor import Batch, Cursor, notice
from .optimizer import Optimizer, OptimizerConfig
from .schedule import Plateau, learning_rate

log = structlog.get_logger("cllm.train")

RELOADED = ("eval_interval", "checkpoint_interval")  # the run's settings a reload changes at a step boundary
RESIZE = "resize"  # CHILD_SPAWN and CHILD_TERMINATE, taken together at a boundary: the last count asked wins


@dataclass
class RunState:
    """What the loop carries from step to step; saved in every checkpoint."""

    step: int = 0
    best_val: float = math.inf
    best_step: int = 0
    evals_since_best: int = 0
    bad_in_row: int = 0
    plateau: Plateau = dataclasses.field(default_factory=Plateau)

    def saved(self) -> np.ndarray:
        """The checkpoint's run_state: 8 numbers (a checkpoint before the plateau schedule has the first 5)."""
        p = self.plateau
        return np.array([self.step, self.best_val, self.best_step, self.evals_since_best, self.bad_in_row, p.best,
                         p.stalled, p.reductions], dtype=np.float64)

    @classmethod
    def restored(cls, numbers) -> "RunState":
        step, best_val, best_step, evals_since_best, bad_in_row, *plateau = numbers
        best, stalled, reductions = plateau or (math.inf, 0, 0)
        return cls(int(step), float(best_val), int(best_step), int(evals_since_best), int(bad_in_row),
                   Plateau(float(best), int(stalled), int(reductions)))


def estimate_memory(model: GPTConfig, batch_size: int, seq_len: int, threads: int, precision: str = "fp32") -> int:
    """Bytes a run needs: each worker's activations, the parameters, optimizer moments and gradient segments,
    and with ``precision`` bf16 the workers' bfloat16 scratch and the bfloat16 copy of the parameters."""
    rows = -(-batch_size // threads)
    n_params = ParamLayout(model).size
    copy16 = 2 * n_params if precision == "bf16" else 0
    return (threads * activation_bytes(model, rows, seq_len, precision) + 4 * n_params * (4 + threads + threads // 12)
            + copy16)


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(model: GPTConfig, batch_size: int, seq_len: int, threads: int, precision: str = "fp32") -> None:
    needed, available = estimate_memory(model, batch_size, seq_len, threads, precision), available_memory()
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


class Trainer:
    """One run: the model's parameters and optimizer, Node Zero, the data and the run directory."""

    def __init__(self, config: RunConfig, model: GPTConfig, dataset, params: np.ndarray, optimizer: Optimizer,
                 state: RunState, hooks: Hooks | None = None, progress=None, ranks=None):
        self.config, self.model, self.dataset = config, model, dataset
        self.run_dir = Path(config.checkpoints.dir)
        self.seq_len = config.model.seq_len
        # a decaying schedule with no decay_steps decays over the run, however long a resume makes it
        self.schedule = dataclasses.replace(config.schedule, decay_steps=config.schedule.decay_steps or config.steps)
        self.params, self.optimizer, self.state = params, optimizer, state
        self.hooks = hooks or Hooks()
        self.progress = progress
        self.ranks = ranks  # the MPI ranks of a run over several processes; None alone
        self.leads = ranks is None or ranks.is_root  # takes control requests, writes checkpoints
        self.communication_s = 0.0  # the last step's wait on the other ranks
        self.node = NodeZero(model, params, optimizer, config.threads, micro_batches=config.micro_batches,
                             step_timeout=config.step_timeout, dropout=config.dropout, seed=config.seed, ranks=ranks,
                             precision=config.precision)
        self.cursor = Cursor(dataset, config.batch_size * config.grad_accum, self.seq_len, config.seed)
        self.documents = 0  # documents begun in the rows trained on (end-of-text separators crossed)
        self.shards = 0  # of them, the ones that begin another source file of the corpus
        self.checkpointed = None  # the step of the last checkpoint written
        self.val_batches = dataset.val_batches(config.batch_size, self.seq_len, config.eval.batches)
        self.stop_reason = None
        self.last_val_loss = self.last_val_accuracy = None
        self.evaluated = None  # the step of the last evaluation
        self.waiting = {}  # control message id -> future answered at the step boundary
        self.pause_wanted = None  # a future answered once the run has paused
        self.resumed = asyncio.Event()
        self.on_idle = None  # called about once a second while paused (the daemon's watchdog)
        self.reload_wanted = None  # (settings, future): reloaded settings, applied at the next step boundary
        self.on_reload = None  # called with the settings where they apply (a follower's log level)
        self.run_directory = None  # the claimed run directory, released when the run ends
        self.history = None  # metrics.jsonl's writer (coord/training/history.py), closed when the run ends

    async def run(self) -> dict:
        c = self.config
        log.info("train_started", steps=c.steps, start_step=self.state.step, batch_size=c.batch_size,
                 seq_len=self.seq_len, threads=c.threads, parameters=int(self.params.size),
                 vocab_size=self.model.vocab_size, train_tokens=self.dataset.n_train, val_tokens=self.dataset.n_val,
                 optimizer=c.optimizer.kind, schedule=c.schedule.kind)
        with threadpool_limits(1, user_api="blas"):  # the pool is the parallelism; BLAS stays single-threaded
            try:
                async with self.node:
                    summary = await self.loop()
            finally:
                if self.progress is not None:
                    self.progress.close()
                if self.history is not None:
                    self.history.close()
                if self.run_directory is not None:
                    self.run_directory.release()
                reloading = self.reload_wanted[1] if self.reload_wanted else None
                for future in list(self.waiting.values()) + [self.pause_wanted, reloading]:
                    if future is not None and not future.done():
                        future.set_exception(RuntimeError("the run ended before the request was handled"))
        return summary

    def request_stop(self, reason: str) -> None:
        """Finish the step in flight, checkpoint, and end the run."""
        self.stop_reason = self.stop_reason or reason
        self.node.request(M.SHUTDOWN_REQUEST, pl.ShutdownRequest(reason=reason, after_step=True))
        self.resumed.set()

    def ask(self, kind: M, payload, priority=None) -> asyncio.Future:
        """A control request answered at the next step boundary: stats, workers, checkpoint."""
        future = asyncio.get_running_loop().create_future()
        self.waiting[self.node.request(kind, payload, priority).id] = future
        return future

    def pause(self) -> asyncio.Future:
        """Pause at the next step boundary; the future is answered once paused (at once if it is)."""
        if self.node.control.state is ControlState.PAUSED:
            self.resumed.clear()  # stays paused, whatever resume was asked just before
            paused = asyncio.get_running_loop().create_future()
            paused.set_result({"paused": True, "step": self.state.step})
            return paused
        if self.pause_wanted is None or self.pause_wanted.done():
            self.pause_wanted = asyncio.get_running_loop().create_future()
            self.resumed.clear()
        return self.pause_wanted

    def resume(self) -> None:
        self.resumed.set()

    def reload(self, settings: dict) -> asyncio.Future:
        """Apply reloaded ``settings`` (``RELOADED`` intervals, and what ``on_reload`` takes) at the next step
        boundary, on every rank; the future is answered with that step. A later reload before the boundary
        replaces the settings and shares the future."""
        future = self.reload_wanted[1] if self.reload_wanted else asyncio.get_running_loop().create_future()
        self.reload_wanted = (settings, future)
        return future

    async def loop(self) -> dict:
        c, s = self.config, self.state
        started, tokens_seen, last = time.perf_counter(), 0, None
        while s.step < c.steps:
            batch = self.cursor.batch(s.step + 1)
            for message in batch.before:
                await self.handle(message)
            result = await self.train_step(batch)
            s.step = batch.step
            tokens_seen += result.tokens
            last = result
            self.record(result, batch)
            if self.ranks is not None and c.check_interval and batch.step % c.check_interval == 0:
                await self.ranks.check_weights(self.params, batch.step)
            if await self.boundary(batch.after + self.intervals(batch.step)):
                break
        if self.progress is not None:
            self.progress.close()
        # a run stopped at an evaluation's boundary has this step's validation loss: counting it again would
        # add a stall to the patience and plateau counters that a resumed run would not have
        val_loss = self.last_val_loss if self.evaluated == s.step else await self.evaluate_and_track()
        path = self.checkpoint(best=s.best_step == s.step, required=True)
        elapsed = time.perf_counter() - started
        summary = {"step": s.step, "loss": last.loss if last else math.nan, "val_loss": val_loss,
                   "val_perplexity": math.exp(min(val_loss, 700.0)), "best_val_loss": s.best_val,
                   "seconds": elapsed, "tokens_per_s": tokens_seen / elapsed if elapsed else 0.0,
                   "checkpoint": str(path), "stopped": self.stop_reason}
        log.info("train_finished", step=s.step, loss=round(summary["loss"], 6), val_loss=round(val_loss, 6),
                 val_perplexity=round(summary["val_perplexity"], 4), best_val_loss=round(s.best_val, 6),
                 seconds=round(elapsed, 2), tokens_per_s=round(summary["tokens_per_s"], 1), stopped=self.stop_reason,
                 documents=self.documents, shards=self.shards)
        return summary

    def intervals(self, step: int) -> list:
        """TWIN_PRIME_HIT for the evaluation and checkpoint intervals this step ends (the last step has its own)."""
        c = self.config
        due = [(c.eval.interval, "eval"), (c.checkpoints.interval, "checkpoint")]
        return [notice(M.TWIN_PRIME_HIT, pl.IntervalHit(step=step, kind=kind))
                for interval, kind in due if interval and step % interval == 0 and step < c.steps]

    async def handle(self, message: Message) -> None:
        """Act on a notice of the token stream or the schedule."""
        p = message.payload
        if message.type is M.EPOCH_START:
            self.hooks.fire(Hook.EPOCH_START, epoch=p.epoch, step=p.step)
            log.info("epoch_start", epoch=p.epoch, step=p.step)
        elif message.type is M.EPOCH_COMPLETE:
            self.hooks.fire(Hook.EPOCH_END, epoch=p.epoch, step=p.step)
            log.info("epoch_end", epoch=p.epoch, step=p.step)
        elif message.type is M.BOUNDARY_REGION_ENTER:
            self.cursor.prepare(self.cursor.batch_epoch(p.step) + 1)
        elif message.type is M.BOUNDARY_REGION_EXIT:
            self.cursor.forget(self.cursor.batch_epoch(p.step))
        elif message.type is M.BOUNDARY_CROSSING and p.kind == "document":
            self.documents += len(p.positions)
        elif message.type is M.BOUNDARY_CROSSING:  # "shard"; debug, as a tree of many files crosses most steps
            self.shards += len(p.positions)
            log.debug("shard_crossed", step=p.step, positions=p.positions, shards=p.shards, names=p.names)
        elif message.type is M.TWIN_PRIME_HIT and p.kind == "eval":
            await self.evaluate_and_track()
            if self.state.best_step == self.state.step:
                self.checkpoint(best=True)
        elif message.type is M.TWIN_PRIME_HIT and self.checkpointed != self.state.step:
            self.checkpoint(best=False)

    async def train_step(self, batch: Batch):
        c = self.config
        lr = learning_rate(self.schedule, batch.step, self.state.plateau.reductions)
        self.hooks.fire(Hook.BATCH_START, step=batch.step, epoch=batch.epoch, lr=lr)
        waited = self.ranks.wait_s if self.ranks is not None else 0.0
        try:
            result = await self.node.step(batch.step, batch.tokens, batch.targets, lr, c.clip_norm,
                                          micro_steps=c.grad_accum)
            if self.ranks is not None:  # the step's wait for the other ranks and the Allreduce
                self.communication_s = self.ranks.wait_s - waited
            return result
        except StepFailed as error:
            self.hooks.fire(Hook.ERROR, step=batch.step, error=str(error))
            raise RunFailed(f"step {batch.step} failed: {error}") from None

    def record(self, result, batch: Batch) -> None:
        c, s = self.config, self.state
        lr = learning_rate(self.schedule, result.step, s.plateau.reductions)
        tokens_per_s = result.tokens / result.seconds
        for event in self.node.take_events():  # GRADIENT_COMPLETE: the gradients are reduced at Node Zero
            p = event.payload
            self.hooks.fire(Hook.GRADIENT_SYNC, step=p.step, loss=p.loss, grad_norm=p.grad_norm, tokens=p.tokens)
        if result.applied:
            s.bad_in_row = 0
            self.hooks.fire(Hook.WEIGHT_UPDATE, step=result.step, lr=lr)
        else:
            s.bad_in_row += 1
            log.warning("step_skipped", step=result.step, loss=result.loss, grad_norm=result.grad_norm,
                        in_a_row=s.bad_in_row)
            self.hooks.fire(Hook.ERROR, step=result.step, error="non-finite loss or gradient")
            if s.bad_in_row >= c.max_bad_steps:
                raise RunFailed(f"the loss or gradient was not finite for {s.bad_in_row} steps in a row (last at step "
                                f"{result.step}); the weights were kept unchanged: lower --learning-rate or "
                                "resume from the last checkpoint")
        self.hooks.fire(Hook.BATCH_END, step=result.step, loss=result.loss, grad_norm=result.grad_norm,
                        tokens=result.tokens, seconds=result.seconds, applied=result.applied)
        if self.progress is not None:
            self.progress.update(result.step, result.loss, tokens_per_s)
        if c.log_interval and (result.step == 1 or result.step % c.log_interval == 0 or result.step == c.steps):
            ranks = {} if self.ranks is None else {"communication_s": round(self.communication_s, 4)}
            log.info("step", step=result.step, loss=round(result.loss, 6), lr=lr, grad_norm=round(result.grad_norm, 6),
                     tokens_per_s=round(tokens_per_s, 1), step_s=round(result.seconds, 4),
                     micro_batches=sum(result.taken.values()), documents=self.documents, shards=self.shards,
                     **ranks)

    async def evaluate_and_track(self) -> float:
        """Validation loss (and token accuracy) on the fixed batches; updates best-so-far and the patience
        counter."""
        s = self.state
        val_loss, val_accuracy = await self.node.evaluate(self.val_batches)
        self.last_val_loss, self.last_val_accuracy, self.evaluated = val_loss, val_accuracy, s.step
        if val_loss < s.best_val:
            s.best_val, s.best_step, s.evals_since_best = val_loss, s.step, 0
        else:
            s.evals_since_best += 1
        self.hooks.fire(Hook.EVALUATED, step=s.step, val_loss=val_loss, val_accuracy=val_accuracy)
        log.info("eval", step=s.step, val_loss=round(val_loss, 6), val_perplexity=round(math.exp(min(val_loss, 700)), 4),
                 val_accuracy=round(val_accuracy, 6), best_val_loss=round(s.best_val, 6))
        # the plateau counts the evaluations on the interval only, so that a run stopped at any step and
        # resumed takes the same learning rates as one that was not stopped
        on_interval = self.config.eval.interval and s.step % self.config.eval.interval == 0
        if self.schedule.kind == "plateau" and on_interval and s.plateau.observe(self.schedule, val_loss):
            log.info("lr_reduced", step=s.step, reductions=s.plateau.reductions,
                     lr=learning_rate(self.schedule, s.step + 1, s.plateau.reductions))
        return val_loss

    async def boundary(self, notices: list) -> bool:
        """Between steps: act on the notices of the stream and the schedule, then on the control requests;
        True when the run should end."""
        for message in notices:
            await self.handle(message)
        if await self.control():
            return True
        s = self.state
        if self.config.eval.patience and s.evals_since_best >= self.config.eval.patience:
            log.info("early_stop", step=s.step, best_val_loss=s.best_val, best_step=s.best_step)
            self.stop_reason = "early_stop"
            return True
        return False

    async def control(self) -> bool:
        """Act on the control requests, pause if asked; True when the run should end."""
        decision, asked = await self.decide(paused=False)
        if await self.act(decision, asked):
            return True
        if not decision.pause:
            return False
        self.node.control.to(ControlState.PAUSED)
        log.info("paused", step=self.state.step)
        if self.pause_wanted is not None and not self.pause_wanted.done():
            self.pause_wanted.set_result({"paused": True, "step": self.state.step})
        while True:
            if self.leads:  # the other ranks wait for rank 0's word in the agreement itself
                try:
                    await asyncio.wait_for(self.resumed.wait(), 1.0)
                except TimeoutError:
                    pass
            if self.on_idle is not None:
                self.on_idle()
            decision, asked = await self.decide(paused=True)
            if await self.act(decision, asked):
                return True
            if decision.resume:
                break
        self.node.control.to(ControlState.RUNNING)
        log.info("resumed_training", step=self.state.step)
        return False

    async def decide(self, paused: bool) -> tuple:
        """The control requests waiting at Node Zero as one Decision, and the requests by kind (their askers
        are answered once it is carried out). Over MPI ranks the Decision is rank 0's, and any rank's stop,
        agreed by all: every rank acts on the same one at the same boundary."""
        asked = defaultdict(list)
        for message in self.node.take_requests():
            asked[RESIZE if message.type in (M.CHILD_SPAWN, M.CHILD_TERMINATE) else message.type].append(message)
        decision = Decision(stop=bool(asked[M.SHUTDOWN_REQUEST]),
                            pause=not paused and self.pause_wanted is not None and not self.pause_wanted.done(),
                            resume=paused and self.resumed.is_set(), checkpoint=bool(asked[M.TWIN_PRIME_HIT]),
                            stats=bool(asked[M.STATS_REQUEST]), reload=self.reload_wanted is not None,
                            workers=max(asked[RESIZE], key=lambda m: m.id).payload.count if asked[RESIZE] else 0)
        if self.ranks is not None:
            decision = await self.ranks.agree(decision)
        return decision, asked

    async def act(self, decision: Decision, asked: dict) -> bool:
        """Carry out ``decision`` (statistics, workers, checkpoint, stop) and answer its askers; True to stop."""
        if decision.stats:
            await self.answer(asked[M.STATS_REQUEST], self.statistics)
        if decision.workers:
            await self.answer(asked[RESIZE], self.resize, decision.workers)
        if decision.checkpoint:
            await self.answer(asked[M.TWIN_PRIME_HIT], self.checkpoint_asked)
        if decision.reload:
            await self.reloading()
        if not decision.stop:
            return False
        reasons = [m.payload.reason for m in asked[M.SHUTDOWN_REQUEST]] or ["another rank's request"]
        log.info("shutdown_requested", step=self.state.step, reason=reasons[0])
        self.stop_reason = self.stop_reason or reasons[0]
        await self.answer(asked[M.SHUTDOWN_REQUEST], self.stopping)
        return True

    async def answer(self, requests: list, action, *args) -> None:
        """Run ``action`` once for ``requests``: every asker gets its result, or its error; an error that no
        one asked for ends the run."""
        futures = [f for f in (self.waiting.pop(m.id, None) for m in requests) if f is not None and not f.done()]
        try:
            result = await action(*args)
        except Exception as error:
            if not futures:
                raise
            for future in futures:
                future.set_exception(error)
            return
        for future in futures:
            future.set_result(result)

    async def resize(self, workers: int) -> dict:
        await self.node.resize(workers)
        return {"workers": self.node.n_workers}

    async def statistics(self) -> dict | None:
        """The run's statistics tree: Node Zero's spheres, under the ranks of a run over MPI (on rank 0)."""
        tree = await self.node.stats()
        return tree if self.ranks is None else await self.ranks.gather_stats(tree)

    async def reloading(self) -> None:
        """Rank 0's reloaded settings, in force on every rank from this boundary on."""
        settings, future = self.reload_wanted or (None, None)
        self.reload_wanted = None
        if self.ranks is not None:
            settings = await self.ranks.run("rank 0's reloaded settings", self.ranks.comm.bcast, settings, 0)
        self.config = with_values(self.config, {key: settings[key] for key in RELOADED})
        if self.on_reload is not None:
            self.on_reload(settings)
        if future is not None and not future.done():
            future.set_result({"step": self.state.step})

    async def checkpoint_asked(self) -> dict:
        return {"checkpoint": str(self.checkpoint(best=False, required=True)), "step": self.state.step}

    async def stopping(self) -> dict:
        return {"stopping": True, "step": self.state.step}

    def checkpoint(self, best: bool, required: bool = False) -> Path | None:
        """Write a checkpoint of the step just taken. One that cannot be written (a full disk) is logged and
        the next interval tries again; one that is ``required`` (the run's last, or asked for) raises
        OperationalError instead, the last checkpoint written staying the one to resume from."""
        s = self.state
        if not self.leads:  # rank 0 writes the run's checkpoints
            return None
        training_state = {"optimizer_state": self.optimizer.state, "optimizer_step": np.int64(self.optimizer.step),
                          "run_state": s.saved(),
                          "settings": np.array(json.dumps(resumable(self.config)))}
        try:
            path = save_checkpoint(self.run_dir, s.step, self.model, self.params, self.dataset.tokenizer,
                                   training_state, dropout=self.config.dropout)
            if best:
                mark_best(self.run_dir, path, s.best_val)
            removed = prune_checkpoints(self.run_dir, self.config.checkpoints.keep)
        except OSError as error:
            log.error("checkpoint_failed", step=s.step, run_dir=str(self.run_dir), error=str(error),
                      action="stop" if required else "retry at the next interval")
            if required:
                raise OperationalError(f"the checkpoint of step {s.step} cannot be written in {self.run_dir} "
                                       f"({error.strerror or error}); free space or fix the directory, then resume "
                                       "from the last checkpoint written") from None
            return None
        self.checkpointed = s.step
        log.info("checkpoint_saved", path=str(path), step=s.step, best=best, removed=[p.name for p in removed])
        self.hooks.fire(Hook.CHECKPOINT, step=s.step, path=str(path), best=best)
        return path


def restore_state(saved, layout: ParamLayout, config: OptimizerConfig, where: Path) -> tuple:
    """(Optimizer, RunState) from a checkpoint's TrainingState; refuses one that does not fit."""
    optimizer = Optimizer(layout, config)
    moments = saved.optimizer_state
    if moments.shape != optimizer.state.shape or moments.dtype != np.float32:
        raise UserError(f"{where}: the optimizer state does not fit a {config.kind} optimizer for this model; "
                        "resume with the optimizer the run was started with")
    optimizer.state[...] = moments
    optimizer.step = saved.optimizer_step
    return optimizer, RunState.restored(saved.run_state)
