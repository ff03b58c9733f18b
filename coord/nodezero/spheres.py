"""The spheres: each owns its inbox, its state and its message loop.

A ``WorkerSphere`` asks for micro-batches, runs their kernels on a pool thread into the
offered gradient segment and reports each one up. A ``GroupSphere`` passes work down and
requests up, and sums the gradient ranges of its workers that are adjacent in the fixed
pairwise order (``reduction.py``) before they go up. Neither knows Node Zero: a sphere has
its parent's inbox, its children's, and the shared ``SphereContext``.
"""

import asyncio
import time
from dataclasses import dataclass

import structlog

from cllm.kernels.dropout import Dropout, step_key
from cllm.protocol import payloads as pl
from cllm.protocol.messages import Message, MessageType as M, make

from .context import SphereContext
from .inbox import Inbox
from .reduction import Combiner, Part
from .states import SPHERE_TRANSITIONS, SphereState as S, StateMachine
from .tree import TreeNode
from .worker import WorkerKernels

log = structlog.get_logger("cllm.sphere")

STOP = object()  # what a handler returns when the sphere's loop ends
STOPPING = (M.SHUTDOWN_REQUEST, M.CHILD_SPAWN, M.CHILD_TERMINATE)


@dataclass
class SphereStats:
    batches: int = 0  # training micro-batches computed
    tokens: int = 0  # their tokens
    busy_s: float = 0.0  # inside kernels
    waiting_s: float = 0.0  # between asking for work and getting it


class Sphere:
    """The message loop and what every sphere does: join the tree, report statistics, recover, stop."""

    def __init__(self, node: TreeNode, parent: int, parent_inbox: Inbox, ctx: SphereContext | None):
        self.id, self.level, self.parent, self.parent_inbox, self.ctx = node.id, node.level, parent, parent_inbox, ctx
        self.inbox = Inbox()
        self.machine = StateMachine(S.INITIALIZING, SPHERE_TRANSITIONS, f"sphere {self.id}")
        self.stats = SphereStats()
        self.group, self.siblings = -1, []  # from SIBLING_DISCOVER
        self.step = 0  # the last step whose weights this sphere has
        self.round = None  # the BATCH_START of the round in progress

    @property
    def state(self) -> S:
        return self.machine.state

    async def run(self) -> None:
        """Take messages until told to stop; a fault is reported to the parent, never swallowed."""
        try:
            while True:
                try:
                    message = await self.inbox.get(timeout=3600.0)
                except TimeoutError:
                    continue
                handler = self.handlers.get(message.type)
                if handler is None:
                    log.warning("message_unexpected", sphere=self.id, type=message.type.name, sender=message.sender)
                elif await handler(self, message) is STOP:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.error("sphere_crashed", sphere=self.id, error_type=type(error).__name__, error=str(error))
            await self.report_error(error)

    async def up(self, kind: M, payload) -> None:
        await self.parent_inbox.put(make(kind, self.id, self.parent, payload), self.ctx.timeout)

    async def report_error(self, error: Exception) -> None:
        step, number = (self.round.step, self.round.round) if self.round else (self.step, 0)
        await self.up(M.ERROR_REPORT, pl.ErrorReport(step=step, round=number, sphere=self.id,
                                                     error_type=type(error).__name__,
                                                     message=str(error) or repr(error)))

    def sync(self, p: pl.ParentSync) -> None:
        self.step = p.step
        self.machine.to(S.READY)

    def discover(self, message: Message) -> None:
        self.group, self.siblings = message.payload.group, list(message.payload.siblings)

    def report(self, children: list) -> pl.StatsReport:
        s = self.stats
        return pl.StatsReport(sphere=self.id, group=self.group, batches=s.batches, tokens=s.tokens, busy_s=s.busy_s,
                              waiting_s=s.waiting_s, children=children)

    def stop(self) -> None:
        self.machine.to(S.TERMINATING)
        self.machine.to(S.TERMINATED)


class WorkerSphere(Sphere):
    def __init__(self, node: TreeNode, parent: int, parent_inbox: Inbox, ctx: SphereContext | None,
                 kernels: WorkerKernels):
        super().__init__(node, parent, parent_inbox, ctx)
        self.index = node.worker
        self.kernels = kernels
        self.weights = None  # Tensors over the weights buffer, from WEIGHTS_BROADCAST
        self.asked = 0.0  # when the last WORK_REQUEST went up

    async def on_parent_sync(self, message: Message) -> None:
        self.sync(message.payload)
        await self.up(M.WEIGHTS_REQUEST, pl.WeightsRequest(step=self.step))

    async def on_sibling_discover(self, message: Message) -> None:
        self.discover(message)

    async def on_weights(self, message: Message) -> None:
        """WEIGHTS_BROADCAST (joining) or WEIGHTS_UPDATED (after a step): read the weights from here on."""
        p = message.payload
        self.weights, self.step = self.ctx.tensors(p.weights), p.step
        self.machine.to(S.READY)

    async def on_batch_start(self, message: Message) -> None:
        self.round = message.payload
        await self.ask()

    async def ask(self) -> None:
        self.machine.to(S.IDLE)
        self.asked = time.perf_counter()
        await self.up(M.WORK_REQUEST, pl.WorkRequest(round=self.round.round, capacity=1))

    async def on_work_offer(self, message: Message) -> None:
        p = message.payload
        if self.round is None or p.round != self.round.round:
            await self.up(M.WORK_REJECT, pl.WorkReply(round=p.round, micro_batch=p.micro_batch, worker=self.index,
                                                      reason=f"round {p.round} is not this worker's"))
            return
        await self.up(M.WORK_ACCEPT, pl.WorkReply(round=p.round, micro_batch=p.micro_batch, worker=self.index,
                                                  reason=""))
        self.stats.waiting_s += time.perf_counter() - self.asked
        self.machine.to(S.PROCESSING)
        try:
            part = await self.compute(p)
        except Exception as error:  # reported; the round fails at Node Zero, which decides what next
            self.machine.to(S.IDLE)
            await self.report_error(error)
            return
        self.stats.busy_s += part.busy_s
        if self.round.kind == "train":
            self.stats.batches += 1
            self.stats.tokens += part.tokens
            await self.up(M.GRADIENT_READY, gradient_sum(self.ctx, self.round.round, part))
        else:
            await self.up(M.BATCH_COMPLETE, pl.BatchComplete(round=p.round, micro_batch=p.micro_batch,
                                                             tokens=part.tokens, loss_sum=part.loss_sum,
                                                             busy_s=part.busy_s, hits=part.hits))
        await self.ask()

    async def compute(self, p: pl.WorkOffer) -> Part:
        """The micro-batch's kernels on a pool thread: forward and backward, or forward only."""
        T = self.round.seq_len
        tokens = self.ctx.resolve(p.tokens).reshape(-1, T)
        targets = self.ctx.resolve(p.targets).reshape(-1, T)
        if self.round.kind == "eval":
            loss_sum, hits, busy = await self.ctx.run(self.kernels.evaluate, self.weights, tokens, targets)
            return Part(p.micro_batch, p.micro_batch + 1, -1, tokens.size, loss_sum, busy, hits)
        # the masks are keyed by the rows' place in the step, not by who computes them
        first_row = p.tokens.offset // T
        drop = Dropout(self.ctx.dropout, step_key(self.ctx.seed, self.round.step), first_row) if self.ctx.dropout \
            else None
        slot = p.grad_segment.offset // p.grad_segment.length
        loss_sum, busy = await self.ctx.run(self.kernels.train, self.weights, self.ctx.tensors(p.grad_segment), tokens,
                                            targets, p.dloss, drop)
        return Part(p.micro_batch, p.micro_batch + 1, slot, tokens.size, loss_sum, busy)

    async def on_error_recovery(self, message: Message) -> None:
        self.round = None
        if self.state not in (S.READY, S.INITIALIZING):
            self.machine.to(S.READY)
        await self.up(M.ERROR_RECOVERY, message.payload)

    async def on_stats_request(self, message: Message) -> None:
        await self.up(M.STATS_REPORT, self.report([]))

    async def on_stop(self, message: Message):
        self.stop()
        await self.up(M.SHUTDOWN_ACK, pl.ShutdownAck(sphere=self.id))
        return STOP

    handlers = {M.PARENT_SYNC: on_parent_sync, M.SIBLING_DISCOVER: on_sibling_discover,
                M.WEIGHTS_BROADCAST: on_weights, M.WEIGHTS_UPDATED: on_weights, M.BATCH_START: on_batch_start,
                M.WORK_OFFER: on_work_offer, M.ERROR_RECOVERY: on_error_recovery,
                M.STATS_REQUEST: on_stats_request, **dict.fromkeys(STOPPING, on_stop)}


class GroupSphere(Sphere):
    """A symmetry group: up to 12 children, work down, requests and sums up."""

    def __init__(self, node: TreeNode, parent: int, parent_inbox: Inbox, ctx: SphereContext | None, route: dict):
        super().__init__(node, parent, parent_inbox, ctx)
        self.children = {}  # child id -> its inbox, in group order (filled in by the builder)
        self.route = route  # descendant id -> the child whose subtree holds it
        self.combiner = None  # the round's ranges waiting here for their sibling
        self.here = set()  # micro-batches of the round accepted below and not yet passed up
        self.answers = {}  # message type -> answers still awaited from the children
        self.reports = []

    async def down(self, message: Message) -> None:
        """A message for a descendant, to the child whose subtree holds it."""
        await self.children[self.route[message.receiver]].put(message, self.ctx.timeout)

    async def to_children(self, kind: M, payload) -> None:
        for child, inbox in self.children.items():
            await inbox.put(make(kind, self.id, child, payload), self.ctx.timeout)

    async def pass_up(self, message: Message) -> None:
        await self.parent_inbox.put(message, self.ctx.timeout)

    async def on_parent_sync(self, message: Message) -> None:
        self.sync(message.payload)
        await self.to_children(M.PARENT_SYNC, pl.ParentSync(step=self.step, parent=self.id))
        await introduce(self.id, self.children, self.ctx.timeout)

    async def on_sibling_discover(self, message: Message) -> None:
        self.discover(message)

    async def on_weights_updated(self, message: Message) -> None:
        self.step = message.payload.step
        self.machine.to(S.READY)
        await self.to_children(M.WEIGHTS_UPDATED, message.payload)

    async def on_batch_start(self, message: Message) -> None:
        self.round = message.payload
        self.combiner = Combiner(self.round.micro_batches, self.ctx.add)
        self.here = set()
        self.machine.to(S.WAITING)
        await self.to_children(M.BATCH_START, message.payload)

    async def on_work_accept(self, message: Message) -> None:
        if self.round is not None and message.payload.round == self.round.round:
            self.here.add(message.payload.micro_batch)
        await self.pass_up(message)

    async def on_gradient(self, message: Message) -> None:
        """A range from below: summed with what waits here, then held for a sibling coming up this way, or passed up."""
        p = message.payload
        if self.round is None or p.round != self.round.round:
            await self.pass_up(message)  # Node Zero sets aside what belongs to a finished round
            return
        received = Part(p.first, p.last + 1, p.result.offset // p.result.length, p.tokens, p.loss_sum, p.busy_s)
        self.machine.to(S.ACCUMULATING)
        part = await self.combiner.combine(received)
        self.machine.to(S.WAITING)
        sibling = self.combiner.sibling_of(part)
        if sibling is not None and set(range(*sibling)) <= self.here:
            self.combiner.keep(part)  # its sibling is being computed below: they meet here
            return
        self.here -= set(range(part.first, part.stop))
        if part == received:
            await self.pass_up(message)
        else:
            await self.up(M.GRADIENT_ACCUMULATE, gradient_sum(self.ctx, p.round, part))

    async def on_answer(self, message: Message) -> None:
        """ERROR_RECOVERY or STATS_REPORT from a child; the sphere answers its parent once all children have."""
        kind = message.type
        self.answers[kind] -= 1
        if kind is M.STATS_REPORT:
            self.reports.append(message.payload)
        if self.answers[kind] == 0:
            if kind is M.STATS_REPORT:
                children = sorted(self.reports, key=lambda r: r.sphere)
                await self.up(M.STATS_REPORT, self.report(children))
            else:
                await self.up(M.ERROR_RECOVERY, message.payload)

    async def on_error_recovery(self, message: Message) -> None:
        if message.sender != self.parent:
            return await self.on_answer(message)
        self.round, self.combiner, self.here = None, None, set()
        if self.state is not S.INITIALIZING:
            self.machine.to(S.READY)
        self.answers[M.ERROR_RECOVERY] = len(self.children)
        await self.to_children(M.ERROR_RECOVERY, message.payload)

    async def on_stats_request(self, message: Message) -> None:
        self.answers[M.STATS_REPORT], self.reports = len(self.children), []
        await self.to_children(M.STATS_REQUEST, message.payload)

    async def on_stop(self, message: Message) -> None:
        self.answers[M.SHUTDOWN_ACK] = len(self.children)
        await self.to_children(message.type, message.payload)

    async def on_shutdown_ack(self, message: Message):
        await self.pass_up(message)
        if message.payload.sphere in self.children:
            self.answers[M.SHUTDOWN_ACK] -= 1
            if self.answers[M.SHUTDOWN_ACK] == 0:
                self.stop()
                await self.up(M.SHUTDOWN_ACK, pl.ShutdownAck(sphere=self.id))
                return STOP

    async def on_from_below(self, message: Message) -> None:
        await self.pass_up(message)

    async def on_for_below(self, message: Message) -> None:
        await self.down(message)

    handlers = {M.PARENT_SYNC: on_parent_sync, M.SIBLING_DISCOVER: on_sibling_discover,
                M.WEIGHTS_UPDATED: on_weights_updated, M.BATCH_START: on_batch_start, M.WORK_ACCEPT: on_work_accept,
                M.GRADIENT_READY: on_gradient, M.GRADIENT_ACCUMULATE: on_gradient,
                M.ERROR_RECOVERY: on_error_recovery, M.STATS_REQUEST: on_stats_request, M.STATS_REPORT: on_answer,
                M.SHUTDOWN_ACK: on_shutdown_ack, **dict.fromkeys(STOPPING, on_stop),
                **dict.fromkeys((M.WORK_REQUEST, M.WORK_REJECT, M.WEIGHTS_REQUEST, M.BATCH_COMPLETE, M.ERROR_REPORT),
                                on_from_below),
                **dict.fromkeys((M.WORK_OFFER, M.WEIGHTS_BROADCAST), on_for_below)}


def gradient_sum(ctx: SphereContext, number: int, part: Part) -> pl.GradientSum:
    return pl.GradientSum(round=number, first=part.first, last=part.last, tokens=part.tokens, loss_sum=part.loss_sum,
                          busy_s=part.busy_s, result=ctx.segment_ref(part.slot))


async def introduce(parent: int, children: dict, timeout: float) -> None:
    """SIBLING_DISCOVER: each child learns its symmetry group (its place among the children) and its siblings."""
    ids = list(children)
    for group, (child, inbox) in enumerate(children.items()):
        await inbox.put(make(M.SIBLING_DISCOVER, parent, child, pl.SiblingDiscover(group=group, siblings=ids)), timeout)


def build_spheres(root: TreeNode, root_inbox: Inbox, ctx: SphereContext, kernels: dict) -> tuple:
    """The live spheres of a planned tree: (Node Zero's children as {id: inbox}, every sphere in id order)."""
    spheres = []

    def grow(node: TreeNode, parent: int, parent_inbox: Inbox):
        if node.is_worker:
            sphere = WorkerSphere(node, parent, parent_inbox, ctx, kernels[node.worker])
        else:
            sphere = GroupSphere(node, parent, parent_inbox, ctx, {d.id: c.id for c in node.children for d in c.walk()})
            sphere.children = {child.id: grow(child, node.id, sphere.inbox).inbox for child in node.children}
        spheres.append(sphere)
        return sphere

    top = {child.id: grow(child, root.id, root_inbox).inbox for child in root.children}
    return top, sorted(spheres, key=lambda s: s.id)
