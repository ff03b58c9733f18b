"""Hugging Face GPT-2 directories in both directions: the whole config family, refusals by name,
weight layouts, and tokenizers that transformers' AutoTokenizer loads."""

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest

from cllm.coord.checkpoints.hf import read_config
from cllm.coord.checkpoints.store import load_checkpoint, save_checkpoint
from cllm.coord.data.dataset import prepare_dataset
from cllm.coord.data.tokenizer import EOS, BpeTokenizer, CharTokenizer, load_tokenizer
from cllm.coord.errors import UserError
from cllm.kernels.model import Activations, ParamLayout, forward

from .hf import GPT2_VOCAB, hf_logits, random_gpt2
from .runs import SHAKESPEARE

torch = pytest.importorskip("torch")  # the interop extra; .ci/run installs it
transformers = pytest.importorskip("transformers")

SMALL = {"n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 4}
STATE = {"optimizer_state": np.zeros((2, 10), np.float32), "optimizer_step": np.int64(3),
         "run_state": np.zeros(5), "settings": np.array("{}")}
TEXT = "ROMEO: what light through yonder window breaks? It is the east, and Juliet is the sun."
FAMILY = {
    f"{'tied' if tied else 'untied'}-{activation}-{'n_inner' if inner else '4x'}":
        {"tie_word_embeddings": tied, "activation_function": activation, "n_inner": inner}
    for tied, activation, inner in itertools.product((True, False), ("gelu_new", "gelu"), (None, 40))
}
FAMILY["layer-scaled, reordered, eps"] = {"scale_attn_by_inverse_layer_idx": True, "reorder_and_upcast_attn": True,
                                          "layer_norm_epsilon": 1e-3, "tie_word_embeddings": False}
FAMILY["unscaled scores"] = {"scale_attn_weights": False}


@pytest.fixture(scope="module")
def bpe():
    return BpeTokenizer.train([SHAKESPEARE.read_text()[:100_000]], 300)


def cllm_logits(cfg, params, tokens):
    return forward(ParamLayout(cfg).tensors(params), Activations(cfg, 1, len(tokens)), tokens[None, :]).copy()


@pytest.mark.parametrize("config", FAMILY.values(), ids=FAMILY.keys())
def test_cllm_computes_the_logits_of_transformers_for_the_gpt2_family(tmp_path, bpe, config):
    # weights large enough that the two GELUs differ by more than the tolerance in the logits
    directory = random_gpt2(tmp_path / "hf", bpe, noise=0.2, **SMALL, **config)
    cfg, params, tokenizer, _ = load_checkpoint(directory)
    assert cfg.tied_head == config.get("tie_word_embeddings", True)
    tokens = tokenizer.encode(TEXT)[:32]
    ours = cllm_logits(cfg, params, tokens)
    for implementation in ("eager", "sdpa"):  # reorder_and_upcast_attn takes its own path in eager
        theirs = hf_logits(directory, tokens, attn_implementation=implementation)
        assert np.max(np.abs(ours - theirs)) < 1e-4
    other_gelu = replace(cfg, activation="gelu" if cfg.activation == "gelu_new" else "gelu_new")
    assert np.max(np.abs(cllm_logits(other_gelu, params, tokens) - theirs)) > 3e-4


def test_an_untied_head_is_read_not_the_embedding(tmp_path, bpe):
    directory = random_gpt2(tmp_path / "hf", bpe, noise=0.05, tie_word_embeddings=False, **SMALL)
    cfg, params, _, _ = load_checkpoint(directory)
    w = ParamLayout(cfg).tensors(params)
    model = transformers.GPT2LMHeadModel.from_pretrained(directory)
    assert np.array_equal(w.lm_head, model.lm_head.weight.detach().numpy())
    assert not np.array_equal(w.lm_head, w.wte)


@pytest.mark.parametrize("config", [FAMILY["untied-gelu-n_inner"], FAMILY["layer-scaled, reordered, eps"]])
def test_a_checkpoint_is_the_same_model_in_transformers(tmp_path, bpe, config):
    directory = random_gpt2(tmp_path / "hf", bpe, noise=0.05, **SMALL, **config)
    cfg, params, tokenizer, _ = load_checkpoint(directory)
    saved = save_checkpoint(tmp_path / "run", 1, cfg, params, tokenizer, STATE, dropout=0.1)
    again = load_checkpoint(saved)
    assert again[0] == cfg and np.array_equal(again[1], params)
    original = transformers.GPT2LMHeadModel.from_pretrained(directory).state_dict()
    exported = transformers.GPT2LMHeadModel.from_pretrained(saved).state_dict()
    assert original.keys() == exported.keys() and all(torch.equal(original[k], exported[k]) for k in original)
    written = json.loads((saved / "config.json").read_text())
    for key, value in config.items():
        assert written[key] == value
    assert written["resid_pdrop"] == written["attn_pdrop"] == written["embd_pdrop"] == 0.1


def edit_config(directory, **changes):
    file = directory / "config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **changes}))


@pytest.mark.parametrize("changes, message", [
    ({"activation_function": "relu"}, 'activation_function = "relu" is not supported; CLLM computes gelu_new and gelu'),
    ({"model_type": "gpt_neo"}, 'model_type = "gpt_neo" is not a GPT-2 model'),
    ({"add_cross_attention": True}, "add_cross_attention = true is not supported"),
    ({"pruned_heads": {"0": [1]}}, 'pruned_heads = {"0": [1]} is not supported'),
    ({"rotary_dim": 64}, "rotary_dim = 64 is not a GPT-2 setting CLLM computes"),
    ({"n_inner": "wide"}, 'n_inner = "wide" is not a positive whole number'),
    ({"layer_norm_epsilon": 0}, "layer_norm_epsilon = 0 is not a number between 0 and 1"),
    ({"tie_word_embeddings": "no"}, 'tie_word_embeddings = "no" is not true or false'),
    ({"n_head": 5}, "n_embd = 32 is not divisible by n_head = 5"),
])
def test_what_cllm_does_not_compute_is_refused_by_key_and_value(tmp_path, bpe, changes, message):
    directory = random_gpt2(tmp_path / "hf", bpe, **SMALL)
    edit_config(directory, **changes)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[").replace("{", r"\{")):
        read_config(directory)


def test_weights_in_other_layouts_load_and_foreign_ones_are_refused(tmp_path, bpe):
    from safetensors.numpy import save_file

    directory = random_gpt2(tmp_path / "hf", bpe, noise=0.05, **SMALL)
    cfg, params, _, _ = load_checkpoint(directory)
    weights = directory / "model.safetensors"
    tensors = {name: view.copy() for name, view in ParamLayout(cfg).views(params).items()}
    mask = np.tril(np.ones((1, 1, 32, 32), np.float32))
    # the original GPT-2 release: no "transformer." prefix, causal-mask buffers beside the weights
    save_file({**tensors, "h.0.attn.bias": mask, "h.1.attn.masked_bias": np.float32([-1e4])}, str(weights))
    assert np.array_equal(load_checkpoint(directory)[1], params)
    # float16 weights are widened
    save_file({k: v.astype(np.float16) for k, v in tensors.items()}, str(weights))
    assert np.array_equal(load_checkpoint(directory)[1], params.astype(np.float16).astype(np.float32))
    # shards named by an index
    weights.unlink()
    names = list(tensors)
    save_file({k: tensors[k] for k in names[:10]}, str(directory / "model-1.safetensors"))
    save_file({k: tensors[k] for k in names[10:]}, str(directory / "model-2.safetensors"))
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: f"model-{1 if i < 10 else 2}.safetensors" for i, k in enumerate(names)}}))
    assert np.array_equal(load_checkpoint(directory)[1], params)
    (directory / "model.safetensors.index.json").unlink()
    save_file({**tensors, "score.weight": np.zeros((2, 32), np.float32)}, str(weights))
    with pytest.raises(UserError, match="has a tensor score.weight that a GPT-2 language model"):
        load_checkpoint(directory)
    weights.unlink()
    (directory / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(UserError, match="pytorch_model.bin, which CLLM does not read"):
        load_checkpoint(directory)


def test_bfloat16_weights_are_refused_with_the_way_out(tmp_path, bpe):
    directory = random_gpt2(tmp_path / "hf", bpe, **SMALL)
    transformers.GPT2LMHeadModel.from_pretrained(directory).to(torch.bfloat16).save_pretrained(directory)
    with pytest.raises(UserError, match=r"is BF16; CLLM reads float32 or float16 weights \(convert"):
        load_checkpoint(directory)


def test_a_gpt2_sized_tokenizer_loads_from_vocab_and_merges_and_separates_documents(tmp_path, gpt2_tokenizer):
    directory = tmp_path / "gpt2"
    directory.mkdir()
    gpt2_tokenizer.tokenizer.model.save(str(directory))  # vocab.json and merges.txt, GPT-2's own files,
    vocab = json.loads((directory / "vocab.json").read_text())  # whose vocabulary ends with <|endoftext|>
    (directory / "vocab.json").write_text(json.dumps({**vocab, EOS: 50256}))
    loaded = load_tokenizer(directory)
    assert loaded.vocab_size == GPT2_VOCAB and loaded.eos_id == 50256
    text = SHAKESPEARE.read_text()[:3000]
    assert np.array_equal(loaded.encode(text), gpt2_tokenizer.encode(text))
    assert loaded.encode(f"one{EOS}two").tolist() == [*loaded.encode("one"), 50256, *loaded.encode("two")]
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("First document.", "Second one.", "Third.")))
    data = prepare_dataset(corpus, "bpe", 0, tmp_path / "cache", val_fraction=0.0, tokenizer=loaded)
    assert data.tokenizer.vocab_size == GPT2_VOCAB
    assert np.flatnonzero(np.asarray(data.tokens) == 50256).size == 2
    assert data.tokenizer.decode(data.tokens) == f"First document.{EOS}Second one.{EOS}Third."


def test_auto_tokenizer_loads_char_and_bpe_checkpoints_with_end_of_text(tmp_path, bpe, gpt2_tokenizer):
    from transformers import AutoTokenizer

    char = CharTokenizer.train([SHAKESPEARE.read_text()[:5000]])
    for name, tokenizer in (("char", char), ("bpe", bpe), ("gpt2", gpt2_tokenizer)):
        directory = random_gpt2(tmp_path / name, tokenizer, **SMALL)
        cfg, params, _, _ = load_checkpoint(directory)
        saved = save_checkpoint(tmp_path / f"run-{name}", 1, cfg, params, tokenizer, STATE)
        assert not (saved / "vocab.json").exists()
        hf = AutoTokenizer.from_pretrained(saved)
        assert hf.eos_token == EOS and hf.eos_token_id == tokenizer.eos_id, name
        text = "First Citizen:\nBefore we proceed any further, hear me speak." + EOS + "All:\nSpeak, speak."
        assert hf(text)["input_ids"] == tokenizer.encode(text).tolist(), name
        assert hf.decode(tokenizer.encode(text)) == text, name
        generation = json.loads((saved / "generation_config.json").read_text())
        assert generation["eos_token_id"] == tokenizer.eos_id
