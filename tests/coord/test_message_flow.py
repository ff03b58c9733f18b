"""Every one of the 28 message types travels in a running system."""

import asyncio

import numpy as np

from cllm.coord.data.dataset import prepare_dataset
from cllm.coord.nodezero.node_zero import NodeZero
from cllm.coord.training.optimizer import Optimizer, OptimizerConfig
from cllm.coord.training.config import RunConfig, with_values
from cllm.coord.nodezero.sphere import Inbox
from cllm.coord.nodezero.states import SphereState
from cllm.coord.training.trainer import RunState, Trainer
from cllm.coord.nodezero.worker import WorkerKernels
from cllm.kernels.model import GPTConfig, ParamLayout, init_params
from cllm.protocol.messages import MessageType

from .runs import small_corpus


async def test_all_28_message_types_are_used(tmp_path, monkeypatch):
    seen = set()
    put = Inbox.put

    def spy(self, message):
        seen.add(message.type)
        return put(self, message)

    monkeypatch.setattr(Inbox, "put", spy)

    # a training run across an epoch boundary, with evaluation and checkpoints
    dataset = prepare_dataset(small_corpus(tmp_path, 8_000), "char", 0, tmp_path / "cache")
    model = GPTConfig(vocab_size=dataset.tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    config = with_values(RunConfig(), dict(batch_size=8, seq_len=16, steps=dataset.steps_per_epoch(8, 16) + 2,
                                           threads=13, eval_interval=5, checkpoint_interval=5, log_interval=0,
                                           checkpoint_dir=tmp_path / "run"))
    params = init_params(model, 0)
    trainer = Trainer(config, model, dataset, params, Optimizer(ParamLayout(model), config.optimizer), RunState())
    await trainer.run()

    # a coordinator that resizes, reports statistics, recovers from a failure and re-offers rejected work
    node = NodeZero(model, init_params(model, 0), Optimizer(ParamLayout(model), OptimizerConfig()), 2, retries=1)
    await node.start()
    x, y = dataset.train_batch(0, 8, 16, 0)
    await node.resize(3)
    await node.resize(2)
    await node.stats()
    failed = {"n": 0}
    train = WorkerKernels.train

    def fail_once(self, *args):
        if failed["n"] == 0:
            failed["n"] += 1
            raise RuntimeError("injected")
        return train(self, *args)

    monkeypatch.setattr(WorkerKernels, "train", fail_once)
    result = await node.step(1, [(x, y)], 1e-3)
    assert result.applied and failed["n"] == 1
    while any(leaf.state is not SphereState.READY for leaf in node.tree.leaves()):
        await asyncio.sleep(0.01)  # WEIGHTS_UPDATED reaching the workers
    node.tree.leaves()[0].machine.to(SphereState.IDLE)  # not ready: it must reject and the other takes the rows
    loss = await node.evaluate(dataset.val_batches(8, 16, 1))
    assert np.isfinite(loss)
    await node.close()

    assert seen | {MessageType.GRADIENT_COMPLETE} == set(MessageType)  # GRADIENT_COMPLETE goes to the loop's events
    assert len(MessageType) == 28
