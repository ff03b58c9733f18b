"""Node Zero: the asyncio coordinator at the root of the sphere tree.

Node Zero never computes a batch. It splits the global batch into micro-batches
(BATCH_START down the tree), each worker sphere runs its kernels on a pool thread
into its own gradient segment, GRADIENT_READY / GRADIENT_ACCUMULATE come up while
the groups sum their children's segments, and Node Zero sums what reaches the root,
applies the optimizer (split across the pool by parameter slices) and sends
WEIGHTS_UPDATED down. Gradients and weights never travel: messages carry
``BufferRef``s into the buffers Node Zero owns.
"""

import asyncio
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import structlog

from cllm.kernels.dropout import Dropout, step_key
from cllm.kernels.model import GPTConfig, ParamLayout
from cllm.kernels.precision import Weights16, unavailable
from cllm.kernels.reduce import sum_segments, sum_squares
from cllm.protocol import payloads as pl
from cllm.protocol.messages import Message, MessageType as M, make

from ..errors import RunFailed
from ..training.optimizer import Optimizer, split_range
from .sphere import Sphere, build_tree
from .states import CONTROL_TRANSITIONS, ControlState, SphereState, StateMachine
from .worker import WorkerKernels

log = structlog.get_logger("cllm.node_zero")

ROOT = 0
CONTROL = {M.SHUTDOWN_REQUEST, M.STATS_REQUEST, M.CHILD_SPAWN, M.CHILD_TERMINATE, M.TWIN_PRIME_HIT}
GRADIENTS = {M.GRADIENT_READY, M.GRADIENT_ACCUMULATE}
EVAL_REPLIES = {M.WORK_ACCEPT, M.WORK_REJECT, M.BATCH_COMPLETE}
NOTICES = {M.EPOCH_START, M.EPOCH_COMPLETE, M.BOUNDARY_CROSSING, M.BOUNDARY_REGION_ENTER, M.BOUNDARY_REGION_EXIT,
           M.TWIN_PRIME_HIT}


class StepFailed(RunFailed):
    """A step, an evaluation or a change of the tree could not complete: a worker raised or did not answer in
    time. The run cannot go on; its last checkpoint is where it resumes."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


@dataclass(frozen=True)
class StepResult:
    step: int
    loss: float  # mean cross-entropy over the step's tokens
    tokens: int
    grad_norm: float  # before clipping
    applied: bool  # False when the loss or gradient was not finite and the update was skipped
    seconds: float  # wall time of the whole step
    kernel_seconds: float  # the step's critical path inside kernels (slowest worker + reduction + update)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def usable_precision(wanted: str) -> str:
    """``wanted``, or fp32 with one log line when bfloat16 products cannot run here."""
    if wanted == "bf16" and (reason := unavailable()):
        log.warning("precision_fallback", wanted=wanted, using="fp32", reason=reason)
        return "fp32"
    return wanted


class NodeZero:
    """Coordinates ``n_workers`` worker spheres training one model's flat parameter buffer.

    With ``precision`` bf16 the workers read the weights of the matrix products rounded to
    bfloat16, rounded once per step after the update; ``params`` stay the float32 master weights.
    """

    def __init__(self, cfg: GPTConfig, params: np.ndarray, optimizer: Optimizer, n_workers: int,
                 step_timeout: float = 600.0, retries: int = 1, dropout: float = 0.0, seed: int = 0,
                 precision: str = "fp32"):
        self.cfg = cfg
        self.dropout, self.seed = dropout, seed
        self.layout = ParamLayout(cfg)
        self.params = params
        self.precision = usable_precision(precision)
        self.weights16 = Weights16(self.layout) if self.precision == "bf16" else None
        self.weights = self.layout.tensors(params)
        if self.weights16 is not None:
            self.weights = self.weights16.tensors(self.weights)
        self.optimizer = optimizer
        self.step_timeout = step_timeout
        self.retries = retries
        self.control = StateMachine(ControlState.INITIALIZING, CONTROL_TRANSITIONS, "node zero")
        self.grad = np.zeros(self.layout.size, dtype=np.float32)
        self.kernels = {}  # worker index -> WorkerKernels, kept across resizes
        self.deferred = []  # control messages that arrived mid-step, handled at the boundary
        self.events = []  # GRADIENT_COMPLETE for the training loop, which takes them after each step
        self.batch = None
        self.tree = None
        self.pool = None
        self.tasks = {}
        self.n_workers = n_workers

    # ----- lifecycle -----

    async def start(self) -> None:
        if self.weights16 is not None:
            self.weights16.refresh(self.params)
        await self.build(self.n_workers)
        self.control.to(ControlState.RUNNING)
        log.info("node_zero_started", workers=self.n_workers, spheres=sum(1 for _ in self.tree.walk()),
                 levels=max(s.level for s in self.tree.walk()) + 1)

    async def build(self, n_workers: int) -> None:
        """Grow the tree, the pool and the gradient buffers for ``n_workers`` and start the spheres."""
        self.n_workers = n_workers
        self.tree = build_tree(n_workers)
        inner = [s for s in self.tree.walk() if s.children and s.id != ROOT]
        self.buffer_row = {leaf.id: leaf.worker_index for leaf in self.tree.leaves()}
        self.buffer_row.update({s.id: n_workers + i for i, s in enumerate(inner)})
        rows = n_workers + len(inner)
        self.grad_buffers = np.zeros((rows, self.layout.size), dtype=np.float32)
        for leaf in self.tree.leaves():
            index = leaf.worker_index
            segment = self.grad_buffers[index]
            if index in self.kernels:
                self.kernels[index].segment = segment
                self.kernels[index].grads = self.layout.tensors(segment)
            else:
                self.kernels[index] = WorkerKernels(self.cfg, self.layout, segment, index, self.precision)
        for index in [i for i in self.kernels if i >= n_workers]:
            del self.kernels[index]
        self.slices = min(usable_cores(), n_workers)
        self.update_plan = self.optimizer.plan(self.slices)
        self.reduce_ranges = split_range(self.layout.size, self.slices)
        self.pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="sphere")
        self.tree.machine.to(SphereState.READY)
        for sphere in self.tree.walk():
            if sphere.id != ROOT:
                self.tasks[sphere.id] = asyncio.create_task(self.run_sphere(sphere), name=f"sphere-{sphere.id}")
        for child in self.tree.children:
            self.send(M.PARENT_SYNC, child, pl.ParentSync(step=self.optimizer.step, parent=ROOT))
        self.introduce(self.tree)
        # every worker asks for the weights and then for work; wait until all have
        await self.collect(lambda m: m.type is M.WORK_REQUEST, n_workers, "workers to come up")

    async def resize(self, n_workers: int) -> None:
        """Between steps: spawn or terminate workers (CHILD_SPAWN / CHILD_TERMINATE) and rebalance."""
        if n_workers == self.n_workers:
            return
        old = self.n_workers
        kind = M.CHILD_SPAWN if n_workers > old else M.CHILD_TERMINATE
        payload = pl.ChildCount(count=n_workers)
        await self.stop_spheres(kind, payload)
        await self.build(n_workers)
        log.info("workers_resized", before=old, after=n_workers)

    async def stop_spheres(self, kind: M, payload) -> None:
        for child in self.tree.children:
            self.send(kind, child, payload)
        # a failed step's late error reports may still come in: they no longer matter to spheres that stop
        await self.collect(lambda m: m.type is M.SHUTDOWN_ACK, len(self.tasks), "spheres to stop", errors_fail=False)
        await asyncio.wait_for(asyncio.gather(*self.tasks.values(), return_exceptions=True), self.step_timeout)
        self.tasks.clear()
        # a thread stuck in a kernel (its step already failed by the timeout) cannot be joined: the pool's
        # idle threads end, a stuck one is left behind rather than freezing the event loop for good
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        if self.control.state is ControlState.STOPPED:
            return
        self.control.to(ControlState.STOPPING)
        if self.tree is not None:
            await self.stop_spheres(M.SHUTDOWN_REQUEST, pl.ShutdownRequest(reason="close", after_step=True))
            self.tree.machine.to(SphereState.TERMINATING)
            self.tree.machine.to(SphereState.TERMINATED)
        self.control.to(ControlState.STOPPED)
        log.info("node_zero_stopped")

    # ----- messaging -----

    def send(self, kind: M, to: Sphere, payload, sender: int = ROOT) -> None:
        message = make(kind, sender, to.id, payload)
        if not to.inbox.put(message):
            raise StepFailed(f"sphere {to.id}'s inbox is full")

    async def post_root(self, kind: M, payload, sender: int) -> None:
        """A sphere's message straight to Node Zero, waiting for room while Node Zero's inbox is full."""
        await self.tree.inbox.deliver(make(kind, sender, ROOT, payload), self.step_timeout)

    async def collect(self, wanted, count: int, what: str, errors_fail: bool = True) -> list:
        """Await ``count`` root messages matching ``wanted``; a worker's error fails the step.

        Control requests arriving meanwhile are kept for the next step boundary; anything
        else (a late answer from a failed step) is dropped.
        """
        got = []
        deadline = time.monotonic() + self.step_timeout
        while len(got) < count:
            try:
                message = await self.tree.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise StepFailed(f"timed out after {self.step_timeout:g}s waiting for {what}", timed_out=True) from None
            if wanted(message):
                got.append(message)
            elif message.type is M.ERROR_REPORT and errors_fail:
                p = message.payload
                raise StepFailed(f"sphere {p.sphere} failed in step {p.step}: {p.error_type}: {p.message}")
            elif message.type is M.WEIGHTS_REQUEST:
                sphere = self.find(message.sender)
                self.send(M.WEIGHTS_BROADCAST, sphere, pl.WeightsBroadcast(step=self.optimizer.step,
                                                                           weights=self.params_ref()))
            elif message.type in CONTROL:
                self.deferred.append(message)
            else:
                log.debug("message_dropped", type=message.type.name, sender=message.sender)
        return got

    def request(self, kind: M, payload, priority=None, sender: int = ROOT) -> Message:
        """A control request (stop, stats, resize, checkpoint) from the event loop's thread, taken at the
        next step boundary."""
        message = make(kind, sender, ROOT, payload, priority)
        if not self.tree.inbox.put(message):
            raise RuntimeError(f"Node Zero's inbox is full ({len(self.tree.inbox)} messages); try again")
        return message

    def take_requests(self) -> list:
        """Control requests waiting at the step boundary, highest priority first."""
        waiting = self.deferred
        self.deferred = []
        while (message := self.tree.inbox.take()) is not None:
            if message.type in CONTROL:
                waiting.append(message)
        return sorted(waiting, key=lambda m: -m.priority)

    def take_events(self) -> list:
        events, self.events = self.events, []
        return events

    def params_ref(self) -> pl.BufferRef:
        return pl.BufferRef(name="params", offset=0, length=self.layout.size)

    def segment_ref(self, sphere: Sphere) -> pl.BufferRef:
        row = self.buffer_row[sphere.id]
        return pl.BufferRef(name="grad_buffers", offset=row * self.layout.size, length=self.layout.size)

    def resolve(self, ref: pl.BufferRef) -> np.ndarray:
        buffer = self.params if ref.name == "params" else self.grad_buffers.reshape(-1)
        return buffer[ref.offset:ref.offset + ref.length]

    def gradient_row(self, report: Message) -> int:
        """The row of ``grad_buffers`` a GRADIENT_READY or GRADIENT_ACCUMULATE refers to."""
        p = report.payload
        ref = p.grad_segment if report.type is M.GRADIENT_READY else p.result
        return ref.offset // self.layout.size

    def find(self, sphere_id: int) -> Sphere:
        return next(s for s in self.tree.walk() if s.id == sphere_id)

    def route(self, sphere: Sphere, worker_index: int) -> Sphere:
        """The child of ``sphere`` whose subtree holds worker ``worker_index``."""
        return next(c for c in sphere.children if any(l.worker_index == worker_index for l in c.leaves()))

    # ----- one training step -----

    def micro_batches(self, rows: int) -> list:
        """(leaf, row_start, row_stop) for every worker: the batch's rows as evenly as possible."""
        leaves = self.tree.leaves()
        base, extra = divmod(rows, len(leaves))
        plan, start = [], 0
        for i, leaf in enumerate(leaves):
            stop = start + base + (1 if i < extra else 0)
            plan.append((leaf, start, stop))
            start = stop
        return plan

    async def step(self, step: int, batches: list, lr: float, clip_norm: float = 0.0) -> StepResult:
        """One optimizer step over ``batches``, a list of (tokens, targets) (B,T) micro-steps whose
        gradients accumulate (one entry: no accumulation).

        A worker that raises fails the micro-step; it is retried ``self.retries`` times
        (ERROR_RECOVERY "retry") before StepFailed reaches the caller. A worker that does
        not answer within ``step_timeout`` fails it at once: its thread may still be running.
        """
        started = time.perf_counter()
        dloss = 1.0 / sum(tokens.size for tokens, _ in batches)
        loss_sum, n_tokens, kernel_s = 0.0, 0, 0.0
        first_row = 0  # the global row of each micro-step's first sequence in the step's batch
        for k, (tokens, targets) in enumerate(batches):
            reports = await self.dispatch_with_retry(step, tokens, targets, dloss, first_row)
            first_row += len(tokens)
            loss_sum += sum(r.payload.loss_sum for r in reports)
            n_tokens += sum(r.payload.tokens for r in reports)
            self.tree.machine.to(SphereState.ACCUMULATING)
            grad, sumsq, reduce_s = await self.reduce([self.gradient_row(r) for r in reports], self.grad,
                                                      accumulate=k > 0, in_place=len(batches) == 1)
            kernel_s += max(r.payload.busy_s for r in reports) + reduce_s
            self.tree.machine.to(SphereState.WAITING)
        grad_norm = math.sqrt(sumsq)
        loss = loss_sum / n_tokens
        applied = math.isfinite(loss) and math.isfinite(grad_norm)
        self.events.append(make(M.GRADIENT_COMPLETE, ROOT, ROOT, pl.GradientComplete(
            step=step, tokens=n_tokens, loss=loss, grad_norm=grad_norm)))

        self.tree.machine.to(SphereState.ACCUMULATING)
        self.tree.machine.to(SphereState.UPDATING)
        if applied:  # a non-finite loss or gradient never reaches the weights
            scale = min(1.0, clip_norm / (grad_norm + 1e-6)) if clip_norm > 0 else 1.0
            kernel_s += await self.update(grad, lr, scale)
        for child in self.tree.children:
            self.send(M.WEIGHTS_UPDATED, child, pl.WeightsUpdated(step=step, lr=lr, weights=self.params_ref()))
        self.tree.machine.to(SphereState.READY)
        return StepResult(step=step, loss=loss, tokens=n_tokens, grad_norm=grad_norm, applied=applied,
                          seconds=time.perf_counter() - started, kernel_seconds=kernel_s)

    async def dispatch_with_retry(self, step: int, tokens: np.ndarray, targets: np.ndarray, dloss: float,
                                  first_row: int = 0) -> list:
        for attempt in range(self.retries + 1):
            try:
                return await self.dispatch(step, tokens, targets, dloss, first_row)
            except StepFailed as error:
                action = "retry" if attempt < self.retries and not error.timed_out else "fail"
                log.warning("step_failed", step=step, attempt=attempt + 1, action=action, error=str(error))
                await self.recover(step, action)
                if action == "fail":
                    raise

    async def dispatch(self, step: int, tokens: np.ndarray, targets: np.ndarray, dloss: float,
                       first_row: int = 0) -> list:
        """BATCH_START down the tree; returns the GRADIENT_READY / GRADIENT_ACCUMULATE that reach the root.
        ``first_row`` is the global row of ``tokens[0]`` in the step's batch (for the dropout masks)."""
        self.batch = (tokens, targets, dloss, first_row)
        active = set()
        for leaf, a, b in self.micro_batches(len(tokens)):
            if b == a:  # more workers than rows: this one sits the step out
                leaf.machine.to(SphereState.IDLE)
            else:
                child = self.route(self.tree, leaf.worker_index)
                active.add(child.id)
                self.send(M.BATCH_START, child, pl.BatchStart(step=step, micro_batch=leaf.worker_index, row_start=a,
                                                              row_stop=b, grad_segment=self.segment_ref(leaf)))
        self.tree.machine.to(SphereState.WAITING)
        reports = await self.collect(
            lambda m: m.type in GRADIENTS and m.payload.step == step, len(active), f"the gradients of step {step}")
        return sorted(reports, key=lambda r: r.sender)  # a fixed summation order, whatever the arrival order

    async def reduce(self, rows: list, out: np.ndarray, accumulate: bool = False, in_place: bool = True) -> tuple:
        """Sum gradient rows into (or, accumulating, onto) ``out`` across the pool by parameter slices.

        Returns (gradient, its sum of squares, seconds of the slowest slice). A single row
        is used where it is, without a copy, when ``in_place`` allows.
        """
        loop = asyncio.get_running_loop()
        if len(rows) == 1 and in_place:
            grad = self.grad_buffers[rows[0]]
            parts = [loop.run_in_executor(self.pool, timed, sum_squares, grad, a, b) for a, b in self.reduce_ranges]
        else:
            grad = out
            index = np.array(rows, dtype=np.int64)
            parts = [loop.run_in_executor(self.pool, timed, sum_segments, out, self.grad_buffers, index, a, b,
                                          accumulate) for a, b in self.reduce_ranges]
        results = await asyncio.wait_for(asyncio.gather(*parts), self.step_timeout)
        return grad, sum(r for r, _ in results), max(s for _, s in results)

    async def update(self, grad: np.ndarray, lr: float, grad_scale: float) -> float:
        """The optimizer step across the pool by parameter slices; returns the slowest slice's seconds."""
        loop = asyncio.get_running_loop()
        self.optimizer.step += 1
        parts = [loop.run_in_executor(self.pool, timed, self.optimizer.update_slice, self.params, grad, pieces, lr,
                                      grad_scale) for pieces in self.update_plan]
        results = await asyncio.wait_for(asyncio.gather(*parts), self.step_timeout)
        seconds = max(s for _, s in results)
        if self.weights16 is not None:  # the products' weights, rounded once per step
            parts = [loop.run_in_executor(self.pool, timed, self.weights16.refresh, self.params, a, b)
                     for a, b in self.reduce_ranges]
            results = await asyncio.wait_for(asyncio.gather(*parts), self.step_timeout)
            seconds += max(s for _, s in results)
        return seconds

    async def recover(self, step: int, action: str) -> None:
        """After a failed step: every sphere drops the step (ERROR_RECOVERY); returns when all have."""
        for child in self.tree.children:
            self.send(M.ERROR_RECOVERY, child, pl.ErrorRecovery(step=step, action=action))
        await self.collect(lambda m: m.type is M.ERROR_RECOVERY, len(self.tree.children), "spheres to recover",
                           errors_fail=False)
        self.tree.inbox.drop(GRADIENTS | {M.ERROR_REPORT})
        self.tree.machine.to(SphereState.READY)

    # ----- evaluation -----

    async def evaluate(self, batches: list) -> float:
        """Mean cross-entropy over ``batches`` of (tokens, targets), forward only.

        Each batch's rows are offered to the workers (WORK_OFFER); a worker accepts and answers
        BATCH_COMPLETE with the summed loss, or rejects when it is not ready and the rows go to
        the next worker.
        """
        self.notify(M.BOUNDARY_REGION_ENTER, pl.Region(step=self.optimizer.step, position=0, kind="validation"))
        total, count = 0.0, 0
        leaves = self.tree.leaves()
        for index, (tokens, targets) in enumerate(batches):
            self.batch = (tokens, targets, 0.0, 0)
            offers = {leaf.worker_index: (leaf, a, b) for leaf, a, b in self.micro_batches(len(tokens)) if b > a}
            for leaf, a, b in offers.values():
                self.send(M.WORK_OFFER, leaf, pl.WorkOffer(step=index, micro_batch=leaf.worker_index, row_start=a,
                                                           row_stop=b))
            losses = {}  # micro_batch -> summed loss, added in a fixed order whatever the arrival order
            while len(losses) < len(offers):
                reply = (await self.collect(lambda m: m.type in EVAL_REPLIES and m.payload.step == index, 1,
                                            "validation rows"))[0]
                p = reply.payload
                if reply.type is M.WORK_ACCEPT:
                    continue
                if reply.type is M.WORK_REJECT:  # hand the rows to the next worker
                    _, a, b = offers[p.micro_batch]
                    other = leaves[(p.micro_batch + 1) % len(leaves)]
                    offers[p.micro_batch] = (other, a, b)
                    self.send(M.WORK_OFFER, other, pl.WorkOffer(step=index, micro_batch=p.micro_batch, row_start=a,
                                                                row_stop=b))
                    continue
                losses[p.micro_batch] = p.loss_sum
                count += p.tokens
            total += sum(losses[k] for k in sorted(losses))
        self.notify(M.BOUNDARY_REGION_EXIT, pl.Region(step=self.optimizer.step, position=0, kind="validation"))
        return total / count

    def notify(self, kind: M, payload) -> None:
        """A notice about the token stream (epochs, boundaries, interval steps) for every sphere."""
        for child in self.tree.children:
            self.send(kind, child, payload)

    # ----- statistics -----

    async def stats(self) -> dict:
        """Per-sphere statistics rolled up the tree (STATS_REQUEST down, STATS_REPORT up)."""
        for child in self.tree.children:
            self.send(M.STATS_REQUEST, child, pl.StatsRequest())
        reports = await self.collect(lambda m: m.type is M.STATS_REPORT, len(self.tree.children), "statistics")
        children = [report_dict(r.payload) for r in sorted(reports, key=lambda r: r.sender)]
        return {"sphere": ROOT, **totals(children), "children": children}

    # ----- the spheres -----

    async def run_sphere(self, sphere: Sphere) -> None:
        """A sphere's message loop; a fault inside it is reported to Node Zero, never swallowed."""
        try:
            await self.sphere_loop(sphere)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.error("sphere_crashed", sphere=sphere.id, error_type=type(error).__name__, error=str(error))
            await self.post_root(M.ERROR_REPORT, pl.ErrorReport(step=self.optimizer.step, sphere=sphere.id,
                                                          error_type=type(error).__name__,
                                                          message=str(error) or repr(error)), sphere.id)

    async def sphere_loop(self, sphere: Sphere) -> None:
        """Workers compute, groups relay and reduce."""
        pending = {}  # step -> [children expected, reports received]
        stats_wait = []
        while True:
            try:
                message = await sphere.inbox.get(timeout=self.step_timeout)
            except TimeoutError:
                continue
            kind, p = message.type, message.payload
            if kind is M.PARENT_SYNC:
                sphere.machine.to(SphereState.READY)
                for child in sphere.children:
                    self.send(M.PARENT_SYNC, child, pl.ParentSync(step=p.step, parent=sphere.id), sphere.id)
                self.introduce(sphere)
                if sphere.is_worker:
                    await self.post_root(M.WEIGHTS_REQUEST, pl.WeightsRequest(step=p.step), sphere.id)
            elif kind is M.SIBLING_DISCOVER:
                sphere.group, sphere.siblings = p.group, list(p.siblings)
            elif kind in NOTICES:
                sphere.notices[kind] += 1
                if kind is M.EPOCH_START:
                    sphere.epoch = p.epoch
                for child in sphere.children:
                    self.send(kind, child, p, sphere.id)
            elif kind is M.WORK_OFFER:
                await self.run_offer(sphere, message)
            elif kind is M.WEIGHTS_BROADCAST:
                await self.post_root(M.WORK_REQUEST, pl.WorkRequest(worker=sphere.worker_index,
                                                              capacity=self.n_workers), sphere.id)
            elif kind is M.BATCH_START and sphere.is_worker:
                await self.run_micro_batch(sphere, p)
            elif kind is M.BATCH_START:
                child = self.route(sphere, p.micro_batch)
                entry = pending.setdefault(p.step, [set(), []])
                entry[0].add(child.id)
                sphere.machine.to(SphereState.WAITING)
                self.send(M.BATCH_START, child, p, sphere.id)
            elif kind in GRADIENTS:
                entry = pending.get(p.step)
                if entry is None:  # a late answer of a failed step
                    continue
                entry[1].append(message)
                if len(entry[1]) == len(entry[0]):
                    del pending[p.step]
                    await self.accumulate(sphere, p.step, sorted(entry[1], key=lambda r: r.sender))
            elif kind is M.WEIGHTS_UPDATED:
                sphere.machine.to(SphereState.READY)
                for child in sphere.children:
                    self.send(M.WEIGHTS_UPDATED, child, p, sphere.id)
            elif kind is M.ERROR_RECOVERY:
                pending.clear()
                if sphere.state not in (SphereState.READY, SphereState.WAITING):  # WAITING: the weights are already updated
                    sphere.machine.to(SphereState.READY)
                await self.relay_up(sphere, message, M.ERROR_RECOVERY)
            elif kind is M.STATS_REQUEST:
                stats_wait = []
                if sphere.is_worker:
                    await self.reply_up(sphere, M.STATS_REPORT, sphere_report(sphere, []))
                else:
                    for child in sphere.children:
                        self.send(M.STATS_REQUEST, child, p, sphere.id)
            elif kind is M.STATS_REPORT:
                stats_wait.append(message)
                if len(stats_wait) == len(sphere.children):
                    children = [r.payload for r in sorted(stats_wait, key=lambda r: r.sender)]
                    await self.reply_up(sphere, M.STATS_REPORT, sphere_report(sphere, children))
            elif kind in (M.SHUTDOWN_REQUEST, M.CHILD_SPAWN, M.CHILD_TERMINATE):
                for child in sphere.children:
                    self.send(kind, child, p, sphere.id)
                sphere.machine.to(SphereState.TERMINATING)
                sphere.machine.to(SphereState.TERMINATED)
                await self.post_root(M.SHUTDOWN_ACK, pl.ShutdownAck(sphere=sphere.id), sphere.id)
                return

    async def relay_up(self, sphere: Sphere, message: Message, kind: M) -> None:
        """Pass ``kind`` down to the children, wait for all of their answers, then answer the parent."""
        if not sphere.children:
            await self.reply_up(sphere, kind, message.payload)
            return
        for child in sphere.children:
            self.send(kind, child, message.payload, sphere.id)
        answers = 0
        while answers < len(sphere.children):
            reply = await sphere.inbox.get(timeout=self.step_timeout)
            if reply.type is kind:
                answers += 1
        sphere.inbox.drop(GRADIENTS)
        await self.reply_up(sphere, kind, message.payload)

    def introduce(self, sphere: Sphere) -> None:
        """SIBLING_DISCOVER: tell each child its symmetry group and the spheres beside it."""
        ids = [child.id for child in sphere.children]
        for child in sphere.children:
            self.send(M.SIBLING_DISCOVER, child, pl.SiblingDiscover(group=sphere.id, siblings=ids), sphere.id)

    async def run_offer(self, sphere: Sphere, message: Message) -> None:
        """WORK_OFFER to a worker: forward-only rows, answered by BATCH_COMPLETE (or WORK_REJECT)."""
        p = message.payload
        if sphere.state not in (SphereState.READY, SphereState.WAITING):  # WAITING: the weights are already updated
            await self.post_root(M.WORK_REJECT, pl.WorkReply(step=p.step, micro_batch=p.micro_batch,
                                                       reason=f"sphere is {sphere.state.name}"), sphere.id)
            return
        await self.post_root(M.WORK_ACCEPT, pl.WorkReply(step=p.step, micro_batch=p.micro_batch, reason=""), sphere.id)
        sphere.machine.to(SphereState.PROCESSING)
        tokens, targets, _, _ = self.batch
        loop = asyncio.get_running_loop()
        try:
            loss_sum, busy = await asyncio.wait_for(loop.run_in_executor(
                self.pool, self.kernels[sphere.worker_index].evaluate, self.weights, tokens[p.row_start:p.row_stop],
                targets[p.row_start:p.row_stop]), self.step_timeout)
        except Exception as error:
            sphere.machine.to(SphereState.READY)
            await self.post_root(M.ERROR_REPORT, pl.ErrorReport(step=self.optimizer.step, sphere=sphere.id,
                                                          error_type=type(error).__name__,
                                                          message=str(error) or repr(error)), sphere.id)
            return
        sphere.machine.to(SphereState.READY)
        await self.post_root(M.BATCH_COMPLETE, pl.BatchComplete(step=p.step, micro_batch=p.micro_batch,
                                                          tokens=(p.row_stop - p.row_start) * tokens.shape[1],
                                                          loss_sum=loss_sum, busy_s=busy), sphere.id)

    async def reply_up(self, sphere: Sphere, kind: M, payload) -> None:
        """A sphere's answer to its parent, waiting for room while the parent's inbox is full."""
        parent = sphere.parent
        await parent.inbox.deliver(make(kind, sphere.id, parent.id, payload), self.step_timeout)

    async def run_micro_batch(self, sphere: Sphere, p) -> None:
        """A worker's BATCH_START: its rows' forward and backward on a pool thread, then GRADIENT_READY."""
        sphere.machine.to(SphereState.PROCESSING)
        tokens, targets, dloss, first_row = self.batch
        kernels = self.kernels[sphere.worker_index]
        drop = Dropout(self.dropout, step_key(self.seed, p.step), first_row + p.row_start) if self.dropout else None
        loop = asyncio.get_running_loop()
        waited = time.perf_counter()
        try:
            future = loop.run_in_executor(self.pool, kernels.train, self.weights, tokens[p.row_start:p.row_stop],
                                          targets[p.row_start:p.row_stop], dloss, drop)
            loss_sum, busy = await asyncio.wait_for(future, self.step_timeout)
        except Exception as error:  # reported, never raised through the event loop
            if sphere.state is SphereState.PROCESSING:
                sphere.machine.to(SphereState.READY)
            await self.post_root(M.ERROR_REPORT, pl.ErrorReport(step=p.step, sphere=sphere.id,
                                                          error_type=type(error).__name__,
                                                          message=str(error) or repr(error)), sphere.id)
            return
        n_tokens = (p.row_stop - p.row_start) * tokens.shape[1]
        stats = sphere.stats
        stats.batches += 1
        stats.tokens += n_tokens
        stats.busy_s += busy
        stats.waiting_s += max(0.0, time.perf_counter() - waited - busy)
        sphere.machine.to(SphereState.WAITING)
        await self.reply_up(sphere, M.GRADIENT_READY, pl.GradientReady(
            step=p.step, micro_batch=p.micro_batch, tokens=n_tokens, loss_sum=loss_sum, busy_s=busy,
            grad_segment=p.grad_segment))

    async def accumulate(self, sphere: Sphere, step: int, reports: list) -> None:
        """A group's children have all reported: sum their segments into the group's own, pass it up."""
        sphere.machine.to(SphereState.ACCUMULATING)
        rows = [self.gradient_row(r) for r in reports]
        own = self.buffer_row[sphere.id]
        if len(rows) == 1:
            own, reduce_s = rows[0], 0.0
        else:
            _, _, reduce_s = await self.reduce(rows, self.grad_buffers[own], in_place=False)
        sphere.machine.to(SphereState.WAITING)
        ref = pl.BufferRef(name="grad_buffers", offset=own * self.layout.size, length=self.layout.size)
        await self.reply_up(sphere, M.GRADIENT_ACCUMULATE, pl.GradientAccumulate(
            step=step, group=sphere.id, sources=[r.sender for r in reports], tokens=sum(r.payload.tokens for r in reports),
            loss_sum=sum(r.payload.loss_sum for r in reports), busy_s=max(r.payload.busy_s for r in reports) + reduce_s,
            result=ref))


def timed(fn, *args) -> tuple:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def sphere_report(sphere: Sphere, children: list) -> pl.StatsReport:
    s = sphere.stats
    return pl.StatsReport(sphere=sphere.id, batches=s.batches, tokens=s.tokens, busy_s=s.busy_s,
                          waiting_s=s.waiting_s, children=children)


STAT_KEYS = ("batches", "tokens", "busy_s", "waiting_s")


def totals(children: list) -> dict:
    return {key: sum(c[key] for c in children) for key in STAT_KEYS}


def report_dict(report: pl.StatsReport) -> dict:
    """A sphere's report as a dict; an inner sphere's counters are its children's totals."""
    children = [report_dict(c) for c in report.children]
    own = totals(children) if children else {key: getattr(report, key) for key in STAT_KEYS}
    return {"sphere": report.sphere, **own, "children": children}
