"""Checkpoints: Hugging Face loads them with the same logits; damaged ones are refused by name."""

import json
import os
import time

import numpy as np
import pytest

from cllm.coord.checkpoints.store import (list_checkpoints, load_checkpoint, load_training_state, mark_best,
                                   prune_checkpoints, save_checkpoint)
from cllm.coord.errors import UserError
from cllm.coord.data.tokenizer import BpeTokenizer, CharTokenizer, load_tokenizer
from cllm.kernels.model import Activations, GPTConfig, ParamLayout, forward, init_params

from .runs import SHAKESPEARE, TINY_MODEL, cllm, small_corpus

CFG = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16)
STATE = {"optimizer_state": np.zeros((2, 10), np.float32), "optimizer_step": np.int64(3),
         "run_state": np.zeros(5), "settings": np.array("{}")}


def trained_params(cfg, seed=0):
    params = init_params(cfg, seed)
    return params + np.random.default_rng(seed + 1).normal(scale=0.05, size=params.shape).astype(np.float32)


@pytest.fixture
def checkpoint(tmp_path):
    tokenizer = CharTokenizer([chr(ord("a") + i) for i in range(26)] + list(" .,;:!?'\n-ABC"))
    assert tokenizer.vocab_size == CFG.vocab_size
    path = save_checkpoint(tmp_path / "run", 7, CFG, trained_params(CFG), tokenizer, STATE)
    return path


def test_a_checkpoint_round_trips(checkpoint):
    cfg, params, tokenizer, path = load_checkpoint(checkpoint.parent)  # a run directory means its latest
    assert path == checkpoint and cfg == CFG
    assert np.array_equal(params, trained_params(CFG))
    assert tokenizer.decode(tokenizer.encode("hello, world")) == "hello, world"
    assert load_training_state(checkpoint).optimizer_step == 3




@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:300]), "model.safetensors"),
    (lambda p: (p / "model.safetensors").unlink(), "model.safetensors is missing"),
    (lambda p: (p / "config.json").write_text("{not json"), "config.json is not a GPT-2 config"),
    (lambda p: (p / "config.json").write_text(json.dumps({**json.loads((p / "config.json").read_text()),
                                                          "n_embd": 32, "n_head": 2})),
     "has shape"),
    (lambda p: (p / "config.json").write_text(json.dumps({**json.loads((p / "config.json").read_text()),
                                                          "n_layer": 3})),
     "has no tensor transformer.h.2"),
    (lambda p: CharTokenizer(list("abc")).save(p), "belongs to another model"),
    (lambda p: (p / "tokenizer.json").write_text("garbage"), "tokenizer.json is not a tokenizer"),
    (lambda p: (p / "tokenizer.json").unlink(), "has no tokenizer"),
])
def test_damaged_checkpoints_are_refused_naming_the_file(checkpoint, damage, message):
    damage(checkpoint)
    with pytest.raises(UserError, match=message):
        load_checkpoint(checkpoint)


def test_a_damaged_training_state_is_refused(checkpoint):
    (checkpoint / "training_state.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match="training_state.npz cannot be read"):
        load_training_state(checkpoint)
    (checkpoint / "training_state.npz").unlink()
    with pytest.raises(UserError, match="training_state.npz is missing"):
        load_training_state(checkpoint)


def test_a_failed_write_leaves_the_previous_checkpoint_whole(checkpoint, monkeypatch):
    run = checkpoint.parent

    def broken_save(directory):
        raise OSError("disk full")

    tokenizer = load_tokenizer(checkpoint)
    monkeypatch.setattr(tokenizer, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(run, 8, CFG, trained_params(CFG, seed=9), tokenizer, STATE)
    assert list_checkpoints(run) == [checkpoint]
    assert sorted(p.name for p in run.iterdir()) == [checkpoint.name]  # no staging directory left
    assert np.array_equal(load_checkpoint(run)[1], trained_params(CFG))


def test_pruning_keeps_the_newest_and_the_best(tmp_path, checkpoint):
    run = checkpoint.parent
    tokenizer = load_tokenizer(checkpoint)
    paths = [save_checkpoint(run, step, CFG, trained_params(CFG), tokenizer, STATE) for step in (10, 20, 30, 40)]
    mark_best(run, paths[0], 1.5)
    leftovers = run / ".checkpoint-00000050.tmp-99999-dead"  # a crashed writer's, an hour old
    leftovers.mkdir()
    os.utime(leftovers, (time.time() - 3600,) * 2)
    removed = prune_checkpoints(run, keep=2)
    assert sorted(p.name for p in removed) == ["checkpoint-00000007", "checkpoint-00000020"]
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-00000010", "checkpoint-00000030",
                                                       "checkpoint-00000040"]
    assert not leftovers.exists()
    assert json.loads((run / "best.json").read_text())["checkpoint"] == "checkpoint-00000010"


def test_hugging_face_gpt2_loads_a_checkpoint_with_the_same_logits(tmp_path):
    torch = pytest.importorskip("torch")  # the interop extra; .ci/run installs it
    transformers = pytest.importorskip("transformers")
    cfg = GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=4, n_embd=32)
    tokenizer = BpeTokenizer.train([SHAKESPEARE.read_text()[:100_000]], 300)
    params = trained_params(cfg, seed=4)
    path = save_checkpoint(tmp_path / "run", 1, cfg, params, tokenizer, STATE)
    model = transformers.GPT2LMHeadModel.from_pretrained(path)
    model.eval()
    text = "ROMEO: what light through yonder window breaks?"
    ids = tokenizer.encode(text)[:32]
    hf_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    assert hf_tokenizer(text)["input_ids"][:32] == ids.tolist()
    ours = forward(ParamLayout(cfg).tensors(params), Activations(cfg, 1, len(ids)), ids[None, :])
    with torch.no_grad():
        theirs = model(torch.tensor(ids[None, :], dtype=torch.long)).logits[0].numpy()
    assert np.max(np.abs(ours - theirs)) < 1e-4


def test_cllm_eval_and_generate_read_a_trained_checkpoint(tmp_path):
    corpus = small_corpus(tmp_path)
    run = tmp_path / "run"
    result = cllm("train", corpus, *TINY_MODEL, "--steps", "40", "--learning-rate", "3e-3", "--checkpoint-dir", run,
                  "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    evaluated = cllm("eval", run, corpus, "--cache-dir", tmp_path / "cache", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    figures = json.loads(evaluated.stdout)
    assert figures["perplexity"] == pytest.approx(np.exp(figures["loss"]), rel=1e-3)
    assert figures["loss"] < np.log(65)  # better than uniform over the characters
    generated = cllm("generate", run, "--prompt", "ROMEO:", "--max-new-tokens", "50", "--seed", "3")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.startswith("ROMEO:") and len(generated.stdout) > 40
    again = cllm("generate", run, "--prompt", "ROMEO:", "--max-new-tokens", "50", "--seed", "3")
    assert again.stdout == generated.stdout
    stopped = cllm("generate", run, "--prompt", "ROMEO:", "--max-new-tokens", "50", "--seed", "3", "--stop", " ")
    text = generated.stdout[len("ROMEO:"):]
    assert stopped.stdout == "ROMEO:" + text[:text.index(" ")] + "\n"  # the same sample, ended before its first space
    refused = cllm("generate", run, "--prompt", "ROMEO™")
    assert refused.returncode == 2 and refused.stdout == "" and "'™' is not in this model's vocabulary" in refused.stderr
    os.remove(run / list_checkpoints(run)[-1].name / "config.json")
    broken = cllm("eval", run, corpus)
    assert broken.returncode == 2 and "config.json is missing" in broken.stderr
