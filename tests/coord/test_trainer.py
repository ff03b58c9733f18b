"""The training loop: hooks, evaluation, early stopping, clean stops and a guard against NaN."""

import json
import signal
import subprocess
import time

import numpy as np
import pytest

from cllm.coord.checkpoints.store import list_checkpoints, load_checkpoint
from cllm.coord.data.dataset import prepare_dataset
from cllm.coord.training.hooks import Hook, Hooks
from cllm.coord.training.config import RunConfig, with_values
from cllm.coord.training.optimizer import Optimizer
from cllm.coord.training.trainer import RunState, Trainer
from cllm.kernels.model import GPTConfig, ParamLayout, init_params
from cllm.protocol import payloads as pl
from cllm.protocol.messages import MessageType as M

from .runs import TINY_MODEL, cllm, command, events, small_corpus


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    return prepare_dataset(small_corpus(tmp, 20_000), "char", 0, tmp / "cache")


def trainer(dataset, run_dir, hooks=None, **settings):
    model = GPTConfig(vocab_size=dataset.tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    values = dict(batch_size=8, seq_len=16, steps=30, threads=2, learning_rate=3e-3, log_interval=0, eval_interval=0,
                  checkpoint_interval=0, checkpoint_dir=run_dir)
    config = with_values(RunConfig(), {**values, **settings})
    params = init_params(model, 0)
    return Trainer(config, model, dataset, params, Optimizer(ParamLayout(model), config.optimizer), RunState(),
                   hooks=hooks)


async def test_hooks_fire_in_order_with_their_fields(dataset, tmp_path):
    seen = []
    hooks = Hooks()
    for hook in Hook:
        hooks.on(hook, lambda info, hook=hook: seen.append((hook, info)))
    per_epoch = dataset.steps_per_epoch(8, 16)
    t = trainer(dataset, tmp_path / "run", hooks, steps=per_epoch + 2)
    await t.run()
    names = [h for h, _ in seen]
    assert names[:6] == [Hook.EPOCH_START, Hook.BATCH_START, Hook.GRADIENT_SYNC, Hook.WEIGHT_UPDATE, Hook.BATCH_END,
                         Hook.BATCH_START]
    assert names.count(Hook.EPOCH_START) == 2 and names.count(Hook.EPOCH_END) == 1
    assert names.count(Hook.BATCH_END) == per_epoch + 2
    assert names[-1] is Hook.CHECKPOINT
    end = next(info for h, info in seen if h is Hook.BATCH_END)
    assert {"step", "loss", "grad_norm", "tokens", "seconds", "applied"} <= set(end)
    assert Hook.ERROR not in names


async def test_a_shutdown_request_during_a_step_ends_the_run_after_that_step(dataset, tmp_path):
    hooks = Hooks()
    holder = {}
    hooks.on(Hook.BATCH_START, lambda info: info["step"] == 3 and holder["t"].node.request(
        M.SHUTDOWN_REQUEST, pl.ShutdownRequest(reason="test", after_step=True)))
    t = trainer(dataset, tmp_path / "run", hooks, steps=50)
    holder["t"] = t
    summary = await t.run()
    assert summary["step"] == 3 and summary["stopped"] == "test"
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-00000003"]


async def test_early_stopping_after_patience_evaluations_without_improvement(dataset, tmp_path):
    # a learning rate of 0 cannot move the weights: the validation loss never improves after the first evaluation
    t = trainer(dataset, tmp_path / "run", steps=100, eval_interval=5, patience=2, learning_rate=0.0)
    summary = await t.run()
    assert summary["stopped"] == "early_stop" and summary["step"] == 15
    assert json.loads((tmp_path / "run" / "best.json").read_text())["checkpoint"] == "checkpoint-00000005"


async def test_a_run_stopped_at_an_evaluation_counts_that_evaluation_once(dataset, tmp_path):
    # evaluations at 5 (the best), 10 and 15 (no better): patience 2 stops the run at 15, whose evaluation must
    # not be counted again at the run's end, or a run resumed from its checkpoint would count one stall too many
    t = trainer(dataset, tmp_path / "run", steps=100, eval_interval=5, patience=2, learning_rate=0.0,
                lr_schedule="plateau", lr_patience=3)
    summary = await t.run()
    assert summary["step"] == 15 and summary["val_loss"] == t.state.best_val
    assert (t.state.evals_since_best, t.state.plateau.stalled) == (2, 2)


async def test_evaluation_tracks_the_best_checkpoint(dataset, tmp_path):
    t = trainer(dataset, tmp_path / "run", steps=40, eval_interval=10, checkpoint_interval=10, keep_checkpoints=1)
    summary = await t.run()
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["val_loss"] == pytest.approx(summary["best_val_loss"])
    kept = [p.name for p in list_checkpoints(tmp_path / "run")]
    assert kept[-1] == "checkpoint-00000040" and best["checkpoint"] in kept and len(kept) <= 2
    assert summary["val_perplexity"] == pytest.approx(np.exp(summary["val_loss"]))


def test_non_finite_losses_stop_the_run_and_never_reach_the_weights(tmp_path):
    corpus = small_corpus(tmp_path, 20_000)
    run = tmp_path / "run"
    # plain SGD at 1e30 sends the weights so far that the next forward pass overflows
    result = cllm("train", corpus, *TINY_MODEL, "--optimizer", "sgd", "--beta1", "0", "--learning-rate", "1e30",
                  "--clip-norm", "0", "--steps", "50", "--max-bad-steps", "3", "--checkpoint-interval", "1",
                  "--checkpoint-dir", run, "--cache-dir", tmp_path / "cache")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("cllm: run failed: the loss or gradient was not finite "
                                                            "for 3 steps in a row")
    skipped = [e for e in events(result.stdout) if e["event"] == "step_skipped"]
    assert [e["in_a_row"] for e in skipped] == [1, 2, 3]
    for checkpoint in list_checkpoints(run):
        assert not np.isnan(load_checkpoint(checkpoint)[1]).any()


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_exits_0(tmp_path):
    corpus = small_corpus(tmp_path)
    run = tmp_path / "run"
    process = subprocess.Popen(command("train", corpus, *TINY_MODEL, "--steps", "100000", "--checkpoint-interval", "0",
                                       "--eval-interval", "0", "--checkpoint-dir", run,
                                       "--cache-dir", tmp_path / "cache", "--log-format", "json"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # wait until it is training
        if '"event": "step"' in line:
            break
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    log = events(out)
    stopped = next(e for e in log if e["event"] == "shutdown_requested")
    assert stopped["reason"] == "SIGTERM"
    finished = next(e for e in log if e["event"] == "train_finished")
    assert [p.name for p in list_checkpoints(run)] == [f"checkpoint-{finished['step']:08d}"]
