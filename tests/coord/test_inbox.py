"""Nothing that must arrive is dropped: a full inbox holds its sender until there is room, and a run at
the largest worker count starts, steps, evaluates, resizes and stops within its step timeout."""

import asyncio

import numpy as np
import pytest

from cllm.coord.nodezero import MAX_WORKERS
from cllm.coord.nodezero.inbox import Inbox
from cllm.coord.nodezero.node_zero import NodeZero
from cllm.coord.training.optimizer import Optimizer, OptimizerConfig
from cllm.kernels.model import GPTConfig, ParamLayout, init_params
from cllm.protocol import payloads as p
from cllm.protocol.messages import MessageType as M, Priority, make


def report(label: int, priority=Priority.NORMAL):
    return make(M.WEIGHTS_REQUEST, label, 0, p.WeightsRequest(step=label), priority)


async def test_a_sender_to_a_full_inbox_waits_for_room_and_nothing_is_lost():
    inbox = Inbox(capacity=32)  # 16 places below the reserve for CRITICAL messages
    senders = [asyncio.create_task(inbox.put(report(i), timeout=5)) for i in range(40)]
    await asyncio.sleep(0.05)
    assert len(inbox) == 16 and sum(task.done() for task in senders) == 16  # the rest are held, not refused
    got = [(await inbox.get(timeout=5)).payload.step for _ in range(40)]
    await asyncio.gather(*senders)
    assert got == list(range(40)) and len(inbox) == 0


async def test_a_sender_nobody_makes_room_for_times_out_instead_of_dropping_silently():
    inbox = Inbox(capacity=20)
    for i in range(4):
        await inbox.put(report(i))
    with pytest.raises(TimeoutError):
        await inbox.put(report(4), timeout=0.1)
    assert len(inbox) == 4


async def test_a_critical_message_after_a_thousand_low_ones_is_handled_first():
    inbox = Inbox(capacity=2048)
    for i in range(1000):
        await inbox.put(report(i, Priority.LOW))
    await inbox.put(make(M.SHUTDOWN_REQUEST, 0, 1, p.ShutdownRequest(reason="test", after_step=True)))
    first = await inbox.get(timeout=1.0)
    assert first.type is M.SHUTDOWN_REQUEST and first.priority is Priority.CRITICAL
    assert (await inbox.get(timeout=1.0)).payload.step == 0  # then the LOW ones, oldest first


async def test_an_empty_inbox_times_out():
    with pytest.raises(TimeoutError):
        await Inbox().get(timeout=0.05)


CFG = GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=8)


async def test_the_largest_worker_count_trains_evaluates_resizes_and_stops():
    """Every worker answers Node Zero at once when the tree comes up: 1,024 answers wait for room in
    Node Zero's inbox instead of being lost."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, CFG.vocab_size, (MAX_WORKERS, CFG.block_size)).astype(np.int32)
    y = (x + 1) % CFG.vocab_size
    async with NodeZero(CFG, init_params(CFG, 0), Optimizer(ParamLayout(CFG), OptimizerConfig()), MAX_WORKERS,
                        step_timeout=60) as node:
        result = await node.step(1, x, y, 1e-3)
        assert result.tokens == x.size and np.isfinite(result.loss)
        assert np.isfinite((await node.evaluate([(x, y)]))[0])
        stats = await node.stats()
        assert stats["batches"] == MAX_WORKERS  # one micro-batch each (evaluation is not counted)
        await node.resize(MAX_WORKERS - 24)
        assert (await node.step(2, x, y, 1e-3)).tokens == x.size
