"""--precision bf16: training with bfloat16 products, the setting kept by checkpoints, the fallback to fp32."""

from pathlib import Path

import numpy as np
import pytest
import structlog

from cllm.coord.checkpoints.store import load_training_state
from cllm.coord.nodezero import node_zero
from cllm.coord.nodezero.node_zero import NodeZero
from cllm.coord.training.optimizer import Optimizer, OptimizerConfig
from cllm.kernels.model import ParamLayout, init_params
from cllm.kernels.precision import unavailable

from .test_cli_train import cllm, events, small_corpus  # noqa: F401 (a fixture)
from .test_node_zero import CFG, train_with

BF16_HERE = unavailable() is None
needs_bf16 = pytest.mark.skipif(not BF16_HERE, reason=f"bf16 cannot run here: {unavailable()}")


@needs_bf16
async def test_training_with_bf16_products_lowers_the_loss_like_fp32():
    _, fp32, _ = await train_with(2, 30)
    _, bf16, _ = await train_with(2, 30, precision="bf16")
    losses = [r.loss for r in bf16]
    assert all(r.applied for r in bf16)
    assert np.mean(losses[-5:]) < losses[0] - 0.2
    assert np.mean(losses[-5:]) == pytest.approx(np.mean([r.loss for r in fp32[-5:]]), rel=2e-2)


async def test_without_bfloat16_support_node_zero_says_so_once_and_runs_fp32(monkeypatch):
    monkeypatch.setattr(node_zero, "unavailable", lambda: "the CPU has neither AVX512_BF16 nor AMX-BF16 instructions")
    with structlog.testing.capture_logs() as logs:
        node = NodeZero(CFG, init_params(CFG, 0), Optimizer(ParamLayout(CFG), OptimizerConfig()), 2,
                        precision="bf16")
    assert node.precision == "fp32" and node.weights16 is None
    assert node.weights.blocks[0].c_fc_weight.dtype == np.float32
    fallbacks = [e for e in logs if e["event"] == "precision_fallback"]
    assert len(fallbacks) == 1 and fallbacks[0]["using"] == "fp32" and "AVX512_BF16" in fallbacks[0]["reason"]


@needs_bf16
async def test_node_zero_rounds_the_weights_again_after_each_update():
    params, _, _ = await train_with(1, 3, precision="bf16")
    node = NodeZero(CFG, params, Optimizer(ParamLayout(CFG), OptimizerConfig()), 1, precision="bf16")
    await node.start()
    try:
        before = node.weights16.flat.copy()
        x = np.random.default_rng(0).integers(0, CFG.vocab_size, (4, CFG.block_size)).astype(np.int32)
        await node.step(1, [(x, x)], 1e-2)
    finally:
        await node.close()
    after = node.weights16.flat
    assert (after != before).mean() > 0.5
    expected = ((params.view(np.uint32) + 0x7FFF + ((params.view(np.uint32) >> 16) & 1)) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(after, expected)


def test_cllm_train_precision_bf16_learns_and_the_checkpoint_keeps_it(tmp_path, small_corpus):  # noqa: F811
    run = tmp_path / "run"
    result = cllm("train", small_corpus, "--tokenizer", "char", "--embed-dim", "32", "--num-layers", "2",
                  "--num-heads", "2", "--seq-len", "32", "--batch-size", "8", "--steps", "40",
                  "--learning-rate", "3e-3", "--threads", "2", "--precision", "bf16", "--checkpoint-dir", run,
                  "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    log = events(result.stdout)
    steps = [e for e in log if e["event"] == "step"]
    finished = next(e for e in log if e["event"] == "train_finished")
    assert finished["val_loss"] < steps[0]["loss"] - 0.5
    fallbacks = [e for e in log if e["event"] == "precision_fallback"]
    assert len(fallbacks) == (0 if BF16_HERE else 1)
    checkpoint = Path(next(e for e in log if e["event"] == "checkpoint_saved")["path"])
    assert load_training_state(checkpoint).settings["precision"] == "bf16"


def test_the_precision_is_an_option_with_its_choices():
    help_text = cllm("train", "--help").stdout
    assert "--precision" in help_text and "bf16" in help_text
    result = cllm("train", "--precision", "fp16")
    assert result.returncode == 2 and "--precision" in result.stderr and "bf16" in result.stderr
