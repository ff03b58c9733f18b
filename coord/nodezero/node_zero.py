"""Node Zero: the asyncio coordinator at the root of the sphere tree.

Node Zero never computes a batch. A step posts its micro-batches as work (BATCH_START), the
workers ask for them (WORK_REQUEST), take what they are offered (WORK_OFFER, WORK_ACCEPT) and
send each gradient up (GRADIENT_READY); the groups sum what they can on the way
(GRADIENT_ACCUMULATE) and Node Zero sums the rest, in the fixed pairwise order of
``reduction.py``. Then it clips, updates the weights across the pool and announces them
(WEIGHTS_UPDATED). ``async with NodeZero(...)`` owns every task of the tree in one TaskGroup.
"""

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import structlog

from cllm.kernels.model import GPTConfig, ParamLayout
from cllm.kernels.precision import Weights16, unavailable
from cllm.protocol import payloads as pl
from cllm.protocol.messages import Message, MessageType as M, make

from ..distributed.ranks import layer_buckets
from ..errors import RunFailed
from ..training.optimizer import Optimizer
from .context import SphereContext
from .inbox import Inbox
from .reduction import Part
from .spheres import WorkerSphere, build_spheres, introduce
from .states import CONTROL_TRANSITIONS, SPHERE_TRANSITIONS, ControlState, SphereState as S, StateMachine
from .tree import plan_tree, pool_threads, routes, slices
from .work import Round, cut, segments_needed
from .worker import WorkerKernels

log = structlog.get_logger("cllm.node_zero")

ROOT = 0
POLL_S = 0.005  # how often a round with work, an asking worker and no free segment looks again


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
    kernel_seconds: float  # the step's critical path in kernels: the busiest worker, Node Zero's sums, norm, update
    taken: dict  # worker index -> micro-batches it computed


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
                 micro_batches: int = 0, step_timeout: float = 600.0, retries: int = 1, dropout: float = 0.0,
                 seed: int = 0, ranks=None, precision: str = "fp32"):
        self.cfg, self.layout, self.params, self.optimizer = cfg, ParamLayout(cfg), params, optimizer
        # the MPI ranks of a run over several processes (coord.distributed.ranks.Ranks), None alone: this
        # Node Zero computes its rank's share of every batch's rows and sums the gradient over the ranks
        self.ranks = ranks
        self.rank_buckets = layer_buckets(self.layout) if ranks is not None else None
        self.precision = usable_precision(precision)
        self.weights16 = Weights16(self.layout) if self.precision == "bf16" else None
        self.weights = self.read_weights(params)  # what the workers' kernels read
        self.n_workers = n_workers
        self.micro_batches = micro_batches  # per micro-step; 0: one per worker
        self.step_timeout, self.retries, self.dropout, self.seed = step_timeout, retries, dropout, seed
        self.control = StateMachine(ControlState.INITIALIZING, CONTROL_TRANSITIONS, "node zero")
        self.machine = StateMachine(S.INITIALIZING, SPHERE_TRANSITIONS, "node zero")
        self.inbox = Inbox()
        self.kernels = {}  # worker index -> WorkerKernels, kept across resizes
        self.requests = []  # control requests, answered at the next step boundary
        self.events = []  # GRADIENT_COMPLETE for the training loop, which takes them after each step
        self.rounds = 0
        self.tree = self.ctx = self.pool = self.tasks = None
        self.children, self.spheres, self.running = {}, [], []

    # ----- lifecycle -----

    def read_weights(self, params: np.ndarray):
        """The tensors the kernels read over ``params``: float32 views, or their bfloat16 rounding."""
        tensors = self.layout.tensors(params)
        return tensors if self.weights16 is None else self.weights16.tensors(tensors)

    async def __aenter__(self) -> "NodeZero":
        if self.weights16 is not None:
            self.weights16.refresh(self.params)
        self.tasks = asyncio.TaskGroup()
        await self.tasks.__aenter__()
        try:
            await self.build(self.n_workers)
        except BaseException:
            await self.cancel()
            await self.tasks.__aexit__(None, None, None)
            raise
        self.control.to(ControlState.RUNNING)
        log.info("node_zero_started", workers=self.n_workers, spheres=len(self.spheres) + 1,
                 levels=max(s.level for s in self.spheres) + 1, pool_threads=pool_threads(self.tree))
        return self

    async def __aexit__(self, kind, error, traceback) -> None:
        """Stop every sphere; the tasks are all done before the TaskGroup closes, so an error of the body
        propagates as it is."""
        try:
            self.control.to(ControlState.STOPPING)
            await self.stop_spheres(M.SHUTDOWN_REQUEST, pl.ShutdownRequest(reason="close", after_step=True))
            self.control.to(ControlState.STOPPED)
            log.info("node_zero_stopped")
        finally:
            await self.cancel()
            await self.tasks.__aexit__(None, None, None)

    async def build(self, n_workers: int) -> None:
        """Plan the tree for ``n_workers``, start its spheres, and wait until every worker has the weights."""
        self.n_workers = n_workers
        self.tree = plan_tree(n_workers)
        self.route = routes(self.tree)[ROOT]
        self.pool = ThreadPoolExecutor(max_workers=pool_threads(self.tree), thread_name_prefix="sphere")
        self.ctx = SphereContext(self.layout, self.params, self.read_weights, self.pool, slices(self.tree),
                                 self.step_timeout, self.dropout, self.seed)
        self.update_plan = self.optimizer.plan(slices(self.tree))
        for leaf in self.tree.leaves():
            self.kernels.setdefault(leaf.worker, WorkerKernels(self.cfg, leaf.worker, self.precision))
        for index in [i for i in self.kernels if i >= n_workers]:
            del self.kernels[index]
        self.children, self.spheres = build_spheres(self.tree, self.inbox, self.ctx, self.kernels)
        self.running = [self.tasks.create_task(s.run(), name=f"sphere-{s.id}") for s in self.spheres]
        self.machine.to(S.READY)
        await self.broadcast(M.PARENT_SYNC, pl.ParentSync(step=self.optimizer.step, parent=ROOT))
        await introduce(ROOT, self.children, self.step_timeout)
        async with self.deadline("the workers to come up"):
            for _ in range(n_workers):  # every worker asks for the weights it will read
                request = await self.expect(M.WEIGHTS_REQUEST)
                await self.send(M.WEIGHTS_BROADCAST, request.sender,
                                pl.WeightsBroadcast(step=self.optimizer.step, weights=self.ctx.params_ref()))

    async def resize(self, n_workers: int) -> None:
        """Between steps: stop the tree (CHILD_SPAWN or CHILD_TERMINATE) and grow one for ``n_workers``."""
        if n_workers == self.n_workers:
            return
        old = self.n_workers
        kind = M.CHILD_SPAWN if n_workers > old else M.CHILD_TERMINATE
        await self.stop_spheres(kind, pl.ChildCount(count=n_workers))
        await self.build(n_workers)
        log.info("workers_resized", before=old, after=n_workers)

    async def stop_spheres(self, kind: M, payload) -> None:
        """Every sphere answers SHUTDOWN_ACK and ends its loop; one that cannot (a worker stuck in a kernel
        past its step's timeout) is cancelled, and its thread left behind rather than freezing the loop."""
        await self.broadcast(kind, payload)
        try:
            async with self.deadline("the spheres to stop"):
                for _ in self.spheres:  # a failed step's late error reports no longer matter
                    await self.expect(M.SHUTDOWN_ACK, errors_fail=False)
        except StepFailed as error:
            log.warning("spheres_not_stopped", error=str(error), action="cancelled")
        await self.cancel()
        self.machine = StateMachine(S.INITIALIZING, SPHERE_TRANSITIONS, "node zero")  # until the next tree is up

    async def cancel(self) -> None:
        """End what is left of the tree's tasks and its pool (nothing, after a clean stop)."""
        for task in self.running:
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)
        self.running = []
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    # ----- messages -----

    async def send(self, kind: M, receiver: int, payload) -> None:
        """To a sphere below, through the child whose subtree holds it."""
        child = receiver if receiver in self.children else self.route[receiver]
        await self.children[child].put(make(kind, ROOT, receiver, payload), self.step_timeout)

    async def broadcast(self, kind: M, payload) -> None:
        for child in self.children:
            await self.send(kind, child, payload)

    def deadline(self, what: str):
        return Deadline(self.step_timeout, what)

    async def expect(self, kind: M, errors_fail: bool = True) -> Message:
        """The next message of ``kind`` (under the caller's deadline); another is logged and set aside, but
        an error report fails what is awaited."""
        while (message := await self.inbox.get(timeout=self.step_timeout)).type is not kind:
            if message.type is M.ERROR_REPORT and errors_fail:
                raise failure(message.payload)
            log.debug("message_set_aside", type=message.type.name, sender=message.sender, waiting_for=kind.name)
        return message

    def request(self, kind: M, payload, priority=None, sender: int = ROOT) -> Message:
        """A control request (stop, stats, resize, checkpoint), taken at the next step boundary."""
        message = make(kind, sender, ROOT, payload, priority)
        self.requests.append(message)
        return message

    def take_requests(self) -> list:
        """Control requests waiting at the step boundary, highest priority first."""
        waiting, self.requests = self.requests, []
        return sorted(waiting, key=lambda m: -m.priority)

    def take_events(self) -> list:
        events, self.events = self.events, []
        return events

    @property
    def workers(self) -> list:
        return [s for s in self.spheres if isinstance(s, WorkerSphere)]

    # ----- one training step -----

    async def step(self, step: int, tokens: np.ndarray, targets: np.ndarray, lr: float, clip_norm: float = 0.0,
                   micro_steps: int = 1) -> StepResult:
        """One optimizer step over the step's rows ``tokens``, ``targets`` (B,T), cut into micro-batches
        (``micro_batches`` per micro-step, ``micro_steps`` micro-steps).

        A worker that raises fails the round: it is posted again (ERROR_RECOVERY "retry") up to
        ``retries`` times before StepFailed reaches the caller. A round not complete within
        ``step_timeout`` fails the step at once: a worker's thread may still be running.
        """
        started = time.perf_counter()
        busy = {w.index: w.stats.busy_s for w in self.workers}
        work, total = await self.run_with_retries(step, "train", tokens, targets, self.cuts(len(tokens), micro_steps))
        self.machine.to(S.ACCUMULATING)
        grad = self.ctx.segment(total.slot)
        loss_sum, n_tokens = total.loss_sum, total.tokens
        if self.ranks is not None:  # every rank ends up with the whole step's gradient, loss and tokens
            loss_sum, n_tokens = await self.ranks.sum_step(grad, self.rank_buckets, loss_sum, n_tokens, step)
        norm_started = time.perf_counter()
        grad_norm = await self.ctx.norm(grad)
        norm_s = time.perf_counter() - norm_started
        loss = loss_sum / n_tokens
        applied = math.isfinite(loss) and math.isfinite(grad_norm)
        self.events.append(make(M.GRADIENT_COMPLETE, ROOT, ROOT, pl.GradientComplete(
            step=step, tokens=n_tokens, loss=loss, grad_norm=grad_norm)))
        self.machine.to(S.UPDATING)
        update_s = 0.0
        if applied:  # a non-finite loss or gradient never reaches the weights
            scale = min(1.0, clip_norm / (grad_norm + 1e-6)) if clip_norm > 0 else 1.0
            update_s = await self.update(grad, lr, scale)
        self.ctx.release(total.slot)
        await self.broadcast(M.WEIGHTS_UPDATED, pl.WeightsUpdated(step=step, lr=lr, weights=self.ctx.params_ref()))
        self.machine.to(S.READY)
        busiest = max(w.stats.busy_s - busy.get(w.index, 0.0) for w in self.workers)
        return StepResult(step=step, loss=loss, tokens=n_tokens, grad_norm=grad_norm, applied=applied,
                          seconds=time.perf_counter() - started, kernel_seconds=busiest + work.sum_s + norm_s + update_s,
                          taken=dict(work.taken))

    def cuts(self, rows: int, micro_steps: int = 1) -> list:
        """(first row, rows) of this process's micro-batches of a batch of ``rows`` rows: ``micro_batches`` per
        micro-step (one per worker by default) over its rank's contiguous share of the rows (all of them, alone).
        Rows keep their place in the batch, so a dropout mask does not depend on who computes the row."""
        a, b = (0, rows) if self.ranks is None else self.ranks.share(rows)
        count = min(b - a, (self.micro_batches or self.n_workers) * micro_steps)
        return [(a + first, size) for first, size in cut(b - a, count)]

    async def run_with_retries(self, step: int, kind: str, tokens: np.ndarray, targets: np.ndarray,
                               cuts: list) -> tuple:
        for attempt in range(self.retries + 1):
            try:
                return await self.run_round(step, kind, tokens, targets, cuts)
            except StepFailed as error:
                action = "retry" if attempt < self.retries and not error.timed_out else "fail"
                log.warning("step_failed", step=step, round=self.rounds, attempt=attempt + 1, action=action,
                            error=str(error))
                await self.recover(step, action)
                if action == "fail":
                    raise

    async def run_round(self, step: int, kind: str, tokens: np.ndarray, targets: np.ndarray, cuts: list) -> tuple:
        """Post the micro-batches ``cuts`` of ``tokens`` as work and gather every answer under one deadline;
        returns (the Round, its pairwise sum)."""
        self.rounds += 1
        start = pl.BatchStart(step=step, round=self.rounds, kind=kind, micro_batches=len(cuts),
                              seq_len=tokens.shape[1])
        if kind == "train":
            self.ctx.reserve(segments_needed(len(cuts), self.n_workers))
        self.ctx.load(tokens, targets)
        work = Round(self.rounds, start, cuts, 1.0 / tokens.size, self.ctx)
        self.machine.to(S.WAITING)
        await self.broadcast(M.BATCH_START, start)
        deadline = time.monotonic() + self.step_timeout
        while work.total is None:
            left = deadline - time.monotonic()
            try:
                message = await self.inbox.get(timeout=max(0.0, min(left, POLL_S) if work.stalled else left))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    what = f"the gradients of step {step}" if kind == "train" else "the validation losses"
                    raise StepFailed(f"timed out after {self.step_timeout:g}s waiting for {what}",
                                     timed_out=True) from None
            else:
                await self.answer(work, message)
            for worker, offer in work.offers():
                await self.send(M.WORK_OFFER, worker, offer)
        return work, work.total

    async def answer(self, work: Round, message: Message) -> None:
        """What Node Zero does with one message of a round."""
        kind, p = message.type, message.payload
        if kind is M.ERROR_REPORT:
            raise failure(p)
        if getattr(p, "round", None) != work.number:  # an answer of a round that failed: its work is forgotten
            log.debug("message_set_aside", type=kind.name, sender=message.sender, round=getattr(p, "round", None))
        elif kind is M.WORK_REQUEST:
            work.asking.extend([message.sender] * p.capacity)
        elif kind is M.WORK_ACCEPT:
            work.taken[p.worker] += 1
            work.offered.pop(p.micro_batch)
        elif kind is M.WORK_REJECT:
            work.rejected(p.micro_batch)
        elif kind in (M.GRADIENT_READY, M.GRADIENT_ACCUMULATE):
            self.machine.to(S.ACCUMULATING)
            started = time.perf_counter()
            await work.receive(Part(p.first, p.last + 1, p.result.offset // p.result.length, p.tokens, p.loss_sum,
                                    p.busy_s))
            if not work.waiting:  # once all is handed out, Node Zero's sums are on the step's critical path
                work.sum_s += time.perf_counter() - started
            self.machine.to(S.WAITING)
        elif kind is M.BATCH_COMPLETE:
            await work.receive(Part(p.micro_batch, p.micro_batch + 1, -1, p.tokens, p.loss_sum, p.busy_s, p.hits))

    async def update(self, grad: np.ndarray, lr: float, grad_scale: float) -> float:
        """The optimizer step across the pool by parameter slices; returns the slowest slice's seconds."""
        loop = asyncio.get_running_loop()
        self.optimizer.step += 1
        parts = [loop.run_in_executor(self.pool, timed, self.optimizer.update_slice, self.params, grad, pieces, lr,
                                      grad_scale) for pieces in self.update_plan]
        seconds = max(await asyncio.wait_for(asyncio.gather(*parts), self.step_timeout))
        if self.weights16 is not None:  # the products' weights, rounded once per step
            started = time.perf_counter()
            await self.ctx.split(refresh_slice, self.weights16, self.params)
            seconds += time.perf_counter() - started
        return seconds

    async def recover(self, step: int, action: str) -> None:
        """After a failed round: every sphere forgets it (ERROR_RECOVERY); returns when all have."""
        await self.broadcast(M.ERROR_RECOVERY, pl.ErrorRecovery(step=step, round=self.rounds, action=action))
        async with self.deadline("the spheres to recover"):
            answered = 0
            while answered < len(self.children):
                message = await self.inbox.get(timeout=self.step_timeout)
                answered += message.type is M.ERROR_RECOVERY
        self.machine.to(S.READY)

    # ----- evaluation -----

    async def evaluate(self, batches: list) -> tuple:
        """(mean cross-entropy, token accuracy) over ``batches`` of (tokens, targets), forward only: one round
        of micro-batches (each batch cut as a step's micro-step is), answered by BATCH_COMPLETE and added in
        the pairwise order. The accuracy is the share of tokens whose target was the likeliest."""
        tokens = np.concatenate([x for x, _ in batches])
        targets = np.concatenate([y for _, y in batches])
        cuts, base = [], 0
        for x, _ in batches:
            cuts += [(base + first, rows) for first, rows in self.cuts(len(x))]
            base += len(x)
        _, total = await self.run_with_retries(self.optimizer.step, "eval", tokens, targets, cuts)
        self.machine.to(S.READY)
        loss_sum, n_tokens, hits = total.loss_sum, total.tokens, total.hits
        if self.ranks is not None:
            loss_sum, n_tokens, hits = await self.ranks.sum_scores(loss_sum, n_tokens, hits)
        return loss_sum / n_tokens, hits / n_tokens

    # ----- statistics -----

    async def stats(self) -> dict:
        """Per-sphere statistics rolled up the tree (STATS_REQUEST down, STATS_REPORT up)."""
        await self.broadcast(M.STATS_REQUEST, pl.StatsRequest())
        async with self.deadline("statistics"):
            reports = [(await self.expect(M.STATS_REPORT)).payload for _ in self.children]
        children = [report_dict(r) for r in sorted(reports, key=lambda r: r.sphere)]
        return {"sphere": ROOT, "group": 0, **totals(children), "children": children}


class Deadline:
    """``async with``: the awaits inside must end within ``seconds``, or StepFailed names what was awaited."""

    def __init__(self, seconds: float, what: str):
        self.seconds, self.what = seconds, what

    async def __aenter__(self):
        self.timeout = asyncio.timeout(self.seconds)
        await self.timeout.__aenter__()

    async def __aexit__(self, kind, error, traceback):
        try:
            await self.timeout.__aexit__(kind, error, traceback)
        except TimeoutError:
            kind = TimeoutError
        if kind is TimeoutError:
            raise StepFailed(f"timed out after {self.seconds:g}s waiting for {self.what}", timed_out=True) from None


def refresh_slice(start: int, stop: int, weights16: Weights16, params: np.ndarray) -> None:
    weights16.refresh(params, start, stop)


def failure(p: pl.ErrorReport) -> StepFailed:
    return StepFailed(f"sphere {p.sphere} failed in step {p.step}: {p.error_type}: {p.message}")


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


STAT_KEYS = ("batches", "tokens", "busy_s", "waiting_s")


def totals(children: list) -> dict:
    return {key: sum(c[key] for c in children) for key in STAT_KEYS}


def report_dict(report: pl.StatsReport) -> dict:
    """A sphere's report as a dict; a group's counters are its children's totals."""
    children = [report_dict(c) for c in report.children]
    own = totals(children) if children else {key: getattr(report, key) for key in STAT_KEYS}
    return {"sphere": report.sphere, "group": report.group, **own, "children": children}
