"""What each of the 28 message types does: the ones an ordinary run sends, each with its meaning, and the
ones off the hot path (resizing, statistics, failures, a stale offer), each doing what it says."""

from collections import Counter, defaultdict

import numpy as np
import pytest

from cllm.coord.data.dataset import prepare_dataset
from cllm.coord.nodezero.inbox import Inbox
from cllm.coord.nodezero.node_zero import NodeZero
from cllm.coord.nodezero.worker import WorkerKernels
from cllm.coord.training.config import RunConfig, with_values
from cllm.coord.training.optimizer import Optimizer, OptimizerConfig
from cllm.coord.training.trainer import RunState, Trainer
from cllm.kernels.model import GPTConfig, ParamLayout, init_params
from cllm.protocol import payloads as pl
from cllm.protocol.messages import MessageType as M

from .runs import SHAKESPEARE

ORDINARY = {M.WORK_REQUEST, M.WORK_OFFER, M.WORK_ACCEPT, M.GRADIENT_READY, M.GRADIENT_ACCUMULATE,
            M.GRADIENT_COMPLETE, M.WEIGHTS_UPDATED, M.WEIGHTS_REQUEST, M.WEIGHTS_BROADCAST, M.BOUNDARY_CROSSING,
            M.TWIN_PRIME_HIT, M.BOUNDARY_REGION_ENTER, M.BOUNDARY_REGION_EXIT, M.EPOCH_START, M.EPOCH_COMPLETE,
            M.BATCH_START, M.BATCH_COMPLETE, M.PARENT_SYNC, M.SIBLING_DISCOVER, M.SHUTDOWN_REQUEST, M.SHUTDOWN_ACK}
OFF_THE_HOT_PATH = {M.WORK_REJECT, M.CHILD_SPAWN, M.CHILD_TERMINATE, M.ERROR_REPORT, M.ERROR_RECOVERY,
                    M.STATS_REQUEST, M.STATS_REPORT}
WORKERS = 13  # two symmetry groups of 7 and 6


def test_every_type_has_one_place_in_the_design():
    assert ORDINARY | OFF_THE_HOT_PATH == set(M) and not ORDINARY & OFF_THE_HOT_PATH and len(M) == 28


def spy(monkeypatch) -> list:
    sent = []
    put = Inbox.put

    async def record(self, message, timeout=600.0):
        sent.append(message)
        await put(self, message, timeout)

    monkeypatch.setattr(Inbox, "put", record)
    return sent


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    """Four documents (four files), so the rows cross document boundaries."""
    tmp = tmp_path_factory.mktemp("docs")
    text = SHAKESPEARE.read_text()[:12_000]
    for i in range(4):
        (tmp / "corpus" / f"part{i}.txt").parent.mkdir(exist_ok=True)
        (tmp / "corpus" / f"part{i}.txt").write_text(text[i * 3000:(i + 1) * 3000])
    return prepare_dataset(tmp / "corpus", "char", 0, tmp / "cache")


async def test_an_ordinary_run_sends_the_work_gradients_weights_and_notices_each_with_its_meaning(
        documents, tmp_path, monkeypatch):
    sent = spy(monkeypatch)
    model = GPTConfig(vocab_size=documents.tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    per_epoch = documents.steps_per_epoch(16, 16)
    steps = per_epoch + 2
    config = with_values(RunConfig(), dict(batch_size=16, seq_len=16, steps=steps, threads=WORKERS,
                                           eval_interval=5, eval_batches=1, checkpoint_interval=5, log_interval=0,
                                           checkpoint_dir=tmp_path / "run"))
    params = init_params(model, 0)
    trainer = Trainer(config, model, documents, params, Optimizer(ParamLayout(model), config.optimizer), RunState())
    handled, events = [], []
    handle, take_events = trainer.handle, trainer.node.take_events
    trainer.handle = lambda message: handled.append(message) or handle(message)
    trainer.node.take_events = lambda: events.extend(found := take_events()) or found
    await trainer.run()

    sent = list({m.id: m for m in sent}.values())  # a message passed up or down through a group counts once
    kinds = Counter(m.type for m in sent + handled + events)
    assert set(kinds) == ORDINARY
    by_round = defaultdict(list)
    for m in sent:
        if m.type in (M.BATCH_START, M.WORK_OFFER, M.WORK_ACCEPT, M.GRADIENT_READY, M.GRADIENT_ACCUMULATE,
                      M.BATCH_COMPLETE):
            by_round[m.payload.round].append(m)
    starts = {r: next(m.payload for m in ms if m.type is M.BATCH_START) for r, ms in by_round.items()}
    assert all(len({m.receiver for m in ms if m.type is M.BATCH_START}) == WORKERS + 2 for ms in by_round.values())
    train = [r for r, s in starts.items() if s.kind == "train"]
    evals = [r for r, s in starts.items() if s.kind == "eval"]
    assert len(train) == steps and len(evals) == steps // 5 + 1  # the intervals' and the last
    for r, ms in by_round.items():
        count = starts[r].micro_batches
        accepted = sorted(m.payload.micro_batch for m in ms if m.type is M.WORK_ACCEPT)
        assert accepted == list(range(count))  # every micro-batch taken once
        if starts[r].kind == "train":  # one gradient per micro-batch, and groups' sums of adjacent ranges
            ready = sorted(m.payload.first for m in ms if m.type is M.GRADIENT_READY)
            assert ready == list(range(count))
            assert all(m.payload.last > m.payload.first for m in ms if m.type is M.GRADIENT_ACCUMULATE)
        else:
            assert sorted(m.payload.micro_batch for m in ms if m.type is M.BATCH_COMPLETE) == list(range(count))
    assert kinds[M.GRADIENT_ACCUMULATE] > 0  # 13 workers: groups sum before Node Zero
    assert kinds[M.GRADIENT_COMPLETE] == steps
    # start-up: each sphere learns its parent and its group number; each worker reads the weights once
    groups = [m.payload.group for m in sent if m.type is M.SIBLING_DISCOVER and m.sender == 0]
    assert groups == [0, 1]
    assert kinds[M.WEIGHTS_REQUEST] == kinds[M.WEIGHTS_BROADCAST] == WORKERS
    assert kinds[M.SHUTDOWN_ACK] == WORKERS + 2  # every sphere that stops
    # the notices of the stream: epochs, the epoch's last batch, the documents' separators, the files'
    notices = Counter(m.type for m in handled)
    assert notices[M.EPOCH_START] == 2 and notices[M.EPOCH_COMPLETE] == 1
    assert notices[M.BOUNDARY_REGION_ENTER] == notices[M.BOUNDARY_REGION_EXIT] == 1
    crossings = [m.payload for m in handled if m.type is M.BOUNDARY_CROSSING and m.payload.kind == "document"]
    assert crossings and trainer.documents == sum(len(c.positions) for c in crossings)
    for crossing in crossings:
        x, _ = documents.train_batch(crossing.step - 1, 16, 16, config.seed)
        assert crossing.positions == np.flatnonzero(x.reshape(-1) == documents.tokenizer.eos_id).tolist()
    files = [m.payload for m in handled if m.type is M.BOUNDARY_CROSSING and m.payload.kind == "shard"]
    assert files and trainer.shards == sum(len(c.positions) for c in files)  # each file is one document here
    assert trainer.shards == trainer.documents
    hits = [(m.payload.step, m.payload.kind) for m in handled if m.type is M.TWIN_PRIME_HIT]
    assert hits == [(s, k) for s in range(5, steps, 5) for k in ("eval", "checkpoint")]


async def test_off_the_hot_path_resizing_statistics_failures_and_a_stale_offer(documents, monkeypatch):
    sent = spy(monkeypatch)
    model = GPTConfig(vocab_size=documents.tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    x, y = documents.train_batch(0, 8, 16, 0)
    async with NodeZero(model, init_params(model, 0), Optimizer(ParamLayout(model), OptimizerConfig()), 2,
                        retries=1) as node:
        await node.resize(3)  # CHILD_SPAWN: the tree is grown again; every sphere that goes answers SHUTDOWN_ACK
        assert [m.payload.count for m in sent if m.type is M.CHILD_SPAWN] == [3] * 2
        await node.resize(2)
        assert [m.payload.count for m in sent if m.type is M.CHILD_TERMINATE] == [2] * 3
        stats = await node.stats()  # STATS_REQUEST down, a STATS_REPORT from each worker
        assert [c["sphere"] for c in stats["children"]] == [1, 2]

        failed = {"n": 0}
        train = WorkerKernels.train

        def fail_once(self, *args):
            if failed["n"] == 0:
                failed["n"] += 1
                raise RuntimeError("injected")
            return train(self, *args)

        monkeypatch.setattr(WorkerKernels, "train", fail_once)
        result = await node.step(1, x, y, 1e-3)  # ERROR_REPORT up, ERROR_RECOVERY "retry" down and back
        assert result.applied and failed["n"] == 1
        (report,) = [m.payload for m in sent if m.type is M.ERROR_REPORT]
        assert report.error_type == "RuntimeError" and report.step == 1
        recoveries = [m for m in sent if m.type is M.ERROR_RECOVERY]
        assert {m.payload.action for m in recoveries} == {"retry"} and len(recoveries) == 4  # two down, two up

        stale = node.rounds - 1  # an offer of a round that is over is declined
        empty = pl.BufferRef("tokens", 0, 0, "int32")
        await node.send(M.WORK_OFFER, 1, pl.WorkOffer(round=stale, micro_batch=0, tokens=empty, targets=empty,
                                                      grad_segment=pl.BufferRef("segments", 0, 0), dloss=0.0))
        reject = await node.expect(M.WORK_REJECT)
        assert reject.payload.round == stale and "not this worker's" in reject.payload.reason
        loss, accuracy = await node.evaluate(documents.val_batches(8, 16, 1))
        assert np.isfinite(loss) and 0 <= accuracy <= 1
    assert {m.type for m in sent} >= OFF_THE_HOT_PATH
