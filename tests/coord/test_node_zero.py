"""Node Zero: data-parallel steps over the sphere tree, equal to one thread's arithmetic, and work stealing
whose results do not depend on who computed what."""

import asyncio
import threading
import time

import numpy as np
import pytest

from cllm.coord.nodezero.node_zero import NodeZero, StepFailed
from cllm.coord.training.optimizer import Optimizer, OptimizerConfig
from cllm.coord.nodezero import MAX_WORKERS
from cllm.coord.nodezero.worker import WorkerKernels
from cllm.kernels.model import Activations, GPTConfig, ParamLayout, forward_backward, init_params

CFG = GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16)
BATCH = 24
LR = 1e-3


def batches(n):
    rng = np.random.default_rng(0)
    for _ in range(n):
        x = rng.integers(0, CFG.vocab_size, (BATCH, CFG.block_size)).astype(np.int32)
        yield x, (3 * x + 1) % CFG.vocab_size


def reference_params(steps):
    """The single-thread path: one forward/backward of the whole batch, then AdamW."""
    layout = ParamLayout(CFG)
    params = init_params(CFG, 0)
    grad = np.zeros(layout.size, np.float32)
    opt = Optimizer(layout, OptimizerConfig())
    acts = Activations(CFG, BATCH, CFG.block_size)
    w, g = layout.tensors(params), layout.tensors(grad)
    for x, y in batches(steps):
        forward_backward(w, g, acts, x, y, 1.0 / x.size)
        norm = float(np.sqrt(np.sum(grad.astype(np.float64) ** 2)))
        opt.step += 1
        for pieces in opt.plan(1):
            opt.update_slice(params, grad, pieces, LR, min(1.0, 1.0 / (norm + 1e-6)))
    return params


def coordinator(workers, params=None, **kwargs):
    params = init_params(CFG, 0) if params is None else params
    return NodeZero(CFG, params, Optimizer(ParamLayout(CFG), OptimizerConfig()), workers, **kwargs)


async def train_with(workers, steps, resize=None, **kwargs):
    params = init_params(CFG, 0)
    results = []
    async with coordinator(workers, params, **kwargs) as node:
        for step, (x, y) in enumerate(batches(steps), start=1):
            if resize and step in resize:
                await node.resize(resize[step])
            results.append(await node.step(step, x, y, LR, clip_norm=1.0))
        stats = await node.stats()
    return params, results, stats


@pytest.fixture(scope="module")
def reference():
    return reference_params(20)


@pytest.mark.parametrize("workers", [1, 2, 3, 12, 63])
async def test_any_number_of_workers_gives_the_single_thread_parameters(reference, workers):
    params, results, _ = await train_with(workers, 20)
    assert np.max(np.abs(params - reference)) < 1e-5
    assert all(r.applied for r in results)
    assert results[-1].loss < results[0].loss  # it learns the mapping


async def test_the_same_worker_count_gives_bitwise_identical_parameters():
    first, _, _ = await train_with(3, 5)
    second, _, _ = await train_with(3, 5)
    assert np.array_equal(first, second)


async def test_workers_spawned_and_terminated_between_steps_do_not_change_the_result(reference):
    params, _, stats = await train_with(2, 20, resize={5: 7, 9: 13, 14: 1, 17: 3})
    assert np.max(np.abs(params - reference)) < 1e-5
    assert len(stats["children"]) == 3  # the last tree: three workers under Node Zero


async def test_accumulating_micro_steps_equals_one_large_batch(reference):
    params = init_params(CFG, 0)
    async with coordinator(2, params) as node:
        for step, (x, y) in enumerate(batches(20), start=1):
            result = await node.step(step, x, y, LR, clip_norm=1.0, micro_steps=3)
            assert result.tokens == BATCH * CFG.block_size and sum(result.taken.values()) == 6
    assert np.max(np.abs(params - reference)) < 1e-5


@pytest.mark.parametrize("workers", [1, 2, 3, 5, 13])
async def test_the_same_micro_batch_count_gives_bitwise_identical_parameters_for_any_worker_count(workers):
    alone, _, _ = await train_with(1, 4, micro_batches=8)
    params, results, _ = await train_with(workers, 4, micro_batches=8)
    assert np.array_equal(params, alone)
    assert all(sum(r.taken.values()) == 8 for r in results)


async def test_dropout_masks_follow_the_rows_not_the_worker_that_computes_them():
    alone, _, _ = await train_with(1, 3, micro_batches=8, dropout=0.2, seed=7)
    spread, _, _ = await train_with(3, 3, micro_batches=8, dropout=0.2, seed=7)
    other_seed, _, _ = await train_with(3, 3, micro_batches=8, dropout=0.2, seed=8)
    assert np.array_equal(spread, alone) and not np.array_equal(spread, other_seed)


def slowed(monkeypatch, worker, seconds):
    """Worker ``worker`` sleeps ``seconds`` before each of its micro-batches."""
    original = WorkerKernels.train

    def train(self, *args):
        if self.index == worker:
            time.sleep(seconds)
        return original(self, *args)

    monkeypatch.setattr(WorkerKernels, "train", train)


async def test_a_slowed_worker_takes_fewer_micro_batches_and_the_result_is_bitwise_the_even_split(monkeypatch):
    even, even_results, _ = await train_with(2, 3, micro_batches=8)
    slowed(monkeypatch, worker=1, seconds=0.05)
    stolen, results, stats = await train_with(2, 3, micro_batches=8)
    assert all(r.taken[1] < r.taken[0] for r in results)
    assert np.array_equal(stolen, even)
    assert [r.loss for r in results] == [r.loss for r in even_results]
    fast, slow = stats["children"]
    assert slow["batches"] < fast["batches"] and fast["batches"] + slow["batches"] == 3 * 8


async def test_a_thousand_and_twenty_four_workers_train_bitwise_as_one():
    alone, _, _ = await train_with(1, 1, micro_batches=8)
    params, results, stats = await train_with(MAX_WORKERS, 1, micro_batches=8)
    assert np.array_equal(params, alone)
    assert sum(results[0].taken.values()) == 8
    assert len(stats["children"]) == 8 and [g["group"] for g in stats["children"]] == list(range(8))
    assert stats["batches"] == 8


async def test_statistics_roll_up_the_tree():
    _, results, stats = await train_with(13, 3)
    assert len(stats["children"]) == 2  # two symmetry groups of 7 and 6 workers
    assert [len(g["children"]) for g in stats["children"]] == [7, 6]
    assert [g["group"] for g in stats["children"]] == [0, 1]
    assert [leaf["group"] for leaf in stats["children"][0]["children"]] == list(range(7))
    assert stats["tokens"] == sum(r.tokens for r in results) == 3 * BATCH * CFG.block_size
    assert stats["batches"] == 3 * 13
    assert stats["tokens"] == sum(g["tokens"] for g in stats["children"])
    assert all(leaf["busy_s"] > 0 for g in stats["children"] for leaf in g["children"])


async def test_node_zero_never_computes_a_batch_itself(monkeypatch):
    loop_thread = threading.get_ident()
    threads = set()
    original = WorkerKernels.train

    def spy(self, *args):
        threads.add(threading.get_ident())
        return original(self, *args)

    monkeypatch.setattr(WorkerKernels, "train", spy)
    await train_with(2, 2)
    assert threads and loop_thread not in threads


def failing_worker(monkeypatch, bad_worker, times):
    """Make worker ``bad_worker`` raise on its first ``times`` micro-batches."""
    original = WorkerKernels.train
    calls = {"n": 0}

    def train(self, *args):
        if self.index == bad_worker and calls["n"] < times:
            calls["n"] += 1
            raise FloatingPointError("injected failure")
        return original(self, *args)

    monkeypatch.setattr(WorkerKernels, "train", train)
    return calls


async def run_steps(node, steps):
    results = []
    for step, (x, y) in enumerate(batches(steps), start=1):
        results.append(await node.step(step, x, y, LR, clip_norm=1.0))
    return results


async def test_a_worker_that_raises_once_is_retried_and_the_step_completes(monkeypatch, reference):
    params = init_params(CFG, 0)
    async with coordinator(13, params, retries=1) as node:
        calls = failing_worker(monkeypatch, bad_worker=5, times=1)
        await run_steps(node, 20)
    assert calls["n"] == 1
    assert np.max(np.abs(params - reference)) < 1e-5


async def test_a_worker_that_keeps_raising_fails_the_step_with_a_clear_error(monkeypatch):
    params = init_params(CFG, 0)
    async with coordinator(3, params, retries=2) as node:
        failing_worker(monkeypatch, bad_worker=1, times=100)
        before = params.copy()
        with pytest.raises(StepFailed, match="sphere 2 failed in step 1: FloatingPointError: injected failure"):
            await run_steps(node, 1)
        assert np.array_equal(params, before)  # nothing half-applied
        monkeypatch.undo()
        results = await run_steps(node, 2)  # the coordinator is still usable
    assert all(r.applied for r in results)


async def test_a_worker_that_hangs_times_out_instead_of_hanging(monkeypatch):
    original = WorkerKernels.train

    def slow(self, *args):
        time.sleep(1.5)
        return original(self, *args)

    monkeypatch.setattr(WorkerKernels, "train", slow)
    async with coordinator(2, step_timeout=0.5) as node:
        started = time.monotonic()
        with pytest.raises(StepFailed, match="timed out after 0.5s"):
            await run_steps(node, 1)
        assert time.monotonic() - started < 5
        await asyncio.sleep(1.5)  # let the stuck threads finish before the pool is shut down


async def test_a_non_finite_loss_never_reaches_the_weights():
    params = init_params(CFG, 0)
    async with coordinator(2, params) as node:
        params[ParamLayout(CFG).slice("ln_f.weight")][0] = np.nan  # poisons the forward pass
        before = params.copy()
        x, y = next(batches(1))
        result = await node.step(1, x, y, LR, 1.0)
    assert not result.applied
    np.testing.assert_array_equal(params, before)
