"""`cllm train --init-from`: fine-tuning a Hugging Face GPT-2 directory, and what comes back out."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from cllm.coord.checkpoints.store import list_checkpoints, load_checkpoint
from cllm.coord.cli.main import main
from cllm.coord.data.tokenizer import EOS, BpeTokenizer
from cllm.kernels.model import Activations, ParamLayout, forward

from .hf import hf_logits, random_gpt2
from .runs import SHAKESPEARE, cllm, events, small_corpus

torch = pytest.importorskip("torch")  # the interop extra; .ci/run installs it
transformers = pytest.importorskip("transformers")

SHAPE = {"n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4}
FAMILY = {
    "tied-gelu_new-4x": {},
    "tied-gelu-n_inner": {"activation_function": "gelu", "n_inner": 40},
    "untied-gelu_new-n_inner": {"tie_word_embeddings": False, "n_inner": 48},
    "untied-gelu-4x": {"tie_word_embeddings": False, "activation_function": "gelu"},
}
RUN = ["--seq-len", "16", "--batch-size", "4", "--threads", "2"]


@pytest.fixture(scope="module")
def bpe():
    return BpeTokenizer.train([SHAKESPEARE.read_text()[:100_000]], 300)


def fine_tune(tmp_path, model, *extra):
    tmp_path.mkdir(exist_ok=True)
    result = cllm("train", small_corpus(tmp_path, 20_000), "--init-from", model, *RUN, "--checkpoint-dir",
                  tmp_path / "run", "--cache-dir", tmp_path / "cache", *extra)
    assert result.returncode == 0, result.stderr
    return list_checkpoints(tmp_path / "run")[-1], events(result.stdout)


def cllm_logits(checkpoint, tokens):
    cfg, params, _, _ = load_checkpoint(checkpoint)
    return forward(ParamLayout(cfg).tensors(params), Activations(cfg, 1, len(tokens)), tokens[None, :]).copy()


@pytest.mark.parametrize("name", ["tied-gelu-n_inner", "untied-gelu_new-n_inner", "untied-gelu-4x"])
def test_a_fine_tuned_model_loads_back_in_transformers_with_the_same_logits(tmp_path, bpe, name):
    model = random_gpt2(tmp_path / "hf", bpe, noise=0.05, **SHAPE, **FAMILY[name])
    checkpoint, log = fine_tune(tmp_path, model, "--steps", "3", "--learning-rate", "3e-3", "--dropout", "0.1")
    assert any(e["event"] == "initialised_from" for e in log)
    started = next(e for e in log if e["event"] == "train_started")
    assert started["seq_len"] == 16 and started["vocab_size"] == 300
    written = json.loads((checkpoint / "config.json").read_text())
    assert written["n_positions"] == 64  # the whole position table, not --seq-len
    assert written["tie_word_embeddings"] == FAMILY[name].get("tie_word_embeddings", True)
    tokens = bpe.encode(SHAKESPEARE.read_text()[:400])[:60]  # past --seq-len, within the table
    ours = cllm_logits(checkpoint, tokens)
    assert np.max(np.abs(ours - hf_logits(checkpoint, tokens))) < 1e-4
    assert np.max(np.abs(ours - hf_logits(model, tokens))) > 1e-3  # training moved the model


@pytest.mark.parametrize("name", FAMILY)
def test_with_a_learning_rate_of_zero_the_saved_weights_are_the_originals(tmp_path, bpe, name):
    model = random_gpt2(tmp_path / "hf", bpe, noise=0.05, **SHAPE, **FAMILY[name])
    checkpoint, _ = fine_tune(tmp_path, model, "--steps", "2", "--learning-rate", "0", "--weight-decay", "0.1",
                              "--dropout", "0.1")
    original, saved = load_file(str(model / "model.safetensors")), load_file(str(checkpoint / "model.safetensors"))
    assert original.keys() == saved.keys()
    assert all(np.array_equal(original[k], saved[k]) for k in original)


def test_dropout_is_the_same_on_resume_and_transformers_generates_past_the_sequence_length(tmp_path, bpe):
    model = random_gpt2(tmp_path / "hf", bpe, noise=0.05, **SHAPE)
    straight, _ = fine_tune(tmp_path, model, "--steps", "4", "--checkpoint-interval", "2", "--dropout", "0.2",
                            "--learning-rate", "3e-3")
    halfway = tmp_path / "resumed" / "checkpoint-00000002"
    shutil.copytree(tmp_path / "run" / halfway.name, halfway)
    resumed = cllm("train", "--resume", halfway.parent, "--steps", "4", "--threads", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert (halfway.parent / straight.name / "model.safetensors").read_bytes() == \
        (straight / "model.safetensors").read_bytes()
    without, _ = fine_tune(tmp_path / "no-dropout", model, "--steps", "4", "--learning-rate", "3e-3")
    assert (without / "model.safetensors").read_bytes() != (straight / "model.safetensors").read_bytes()

    hf = transformers.GPT2LMHeadModel.from_pretrained(straight).eval()
    prompt = torch.tensor(bpe.encode("ROMEO: what light")[None, :].astype(np.int64))
    with torch.no_grad():
        out = hf.generate(prompt, max_new_tokens=40, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert out.shape[1] == prompt.shape[1] + 40 > 16


@pytest.mark.parametrize("arguments, message", [
    (["--embed-dim", "64"], "--embed-dim 64 differs from {model}'s 32; leave it out with --init-from"),
    (["--tokenizer", "bpe"], "--tokenizer applies to a new tokenizer; with --init-from the tokenizer is {model}'s"),
    (["--seq-len", "65"], "--seq-len 65 is longer than the 64 positions of {model}; use at most 64"),
    (["--resume", "{model}"], "--init-from starts a new run from a model and --resume continues a run"),
])
def test_options_that_conflict_with_the_model_are_refused_in_one_line(tmp_path, bpe, capsys, arguments, message):
    model = random_gpt2(tmp_path / "hf", bpe, **SHAPE)
    arguments = [a.format(model=model) for a in arguments]
    capsys.readouterr()
    code = main(["train", str(small_corpus(tmp_path)), "--init-from", str(model), *arguments,
                 "--checkpoint-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message.format(model=model) in err
    assert not (tmp_path / "run").exists()


def test_an_unsupported_config_is_refused_naming_key_and_value(tmp_path, bpe):
    model = random_gpt2(tmp_path / "hf", bpe, **SHAPE, activation_function="relu")
    result = cllm("train", small_corpus(tmp_path), "--init-from", model, "--checkpoint-dir", tmp_path / "run")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert 'activation_function = "relu" is not supported' in result.stderr and not (tmp_path / "run").exists()


def test_a_gpt2_sized_vocabulary_fine_tunes_and_generation_stops_at_end_of_text(tmp_path, gpt2_tokenizer):
    model = random_gpt2(tmp_path / "hf", gpt2_tokenizer, noise=0.02, **SHAPE, tie_word_embeddings=False)
    corpus = tmp_path / "docs.jsonl"
    text = SHAKESPEARE.read_text()[:30_000].split("\n\n")
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in text))
    result = cllm("train", corpus, "--init-from", model, *RUN, "--steps", "2", "--checkpoint-dir", tmp_path / "run",
                  "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    tokenized = next(e for e in events(result.stdout) if e["event"] == "dataset_tokenized")
    assert tokenized["vocab_size"] == 50257 and tokenized["documents"] == len(text)
    # make end-of-text the likeliest next token everywhere: ln_f gives the same vector at every
    # position, and the head's end-of-text row points along it
    checkpoint = list_checkpoints(tmp_path / "run")[-1]
    tensors = load_file(str(checkpoint / "model.safetensors"))
    tensors["transformer.ln_f.weight"][:] = 0.0
    tensors["transformer.ln_f.bias"][:] = 1.0
    tensors["lm_head.weight"][50256] = 1.0
    save_file(tensors, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})
    generated = cllm("generate", checkpoint, "--prompt", "ROMEO:", "--temperature", "0")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout == "ROMEO:\n"  # the first token is end-of-text: nothing follows the prompt
    hf = transformers.GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    assert hf_tokenizer.eos_token == EOS and hf_tokenizer.eos_token_id == 50256
    prompt = hf_tokenizer("ROMEO:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=50256)
    assert out[0, prompt.shape[1]:].tolist() == [50256]  # transformers stops there too
