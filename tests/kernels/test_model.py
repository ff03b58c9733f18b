"""The whole GPT-2 model: gradient, initialisation, and thread safety."""

import threading

import numpy as np
import pytest

from dataclasses import replace

from cllm.kernels.crossentropy import crossentropy_forward
from cllm.kernels.dropout import Dropout, step_key
from cllm.kernels.model import Activations, GPTConfig, ParamLayout, forward, forward_backward, init_params, loss_sum

from .gradcheck import assert_grad_close, numerical_grad

TINY = GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8)
# the members of the GPT-2 family the model computes, each with its own gradient check
FAMILY = {
    "gpt2": TINY,
    "untied head": replace(TINY, tied_head=False),
    "n_inner": replace(TINY, n_inner=12),
    "exact gelu": replace(TINY, activation="gelu"),
    "eps and scaled attention": replace(TINY, ln_eps=1e-3, scale_attn_by_inverse_layer_idx=True,
                                        scale_attn_weights=False),
}


def batch(cfg, B, T, seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, size=(B, T)).astype(np.int32)
    targets = rng.integers(0, cfg.vocab_size, size=(B, T)).astype(np.int32)
    return tokens, targets


# each member of the family, and dropout: its masks are fixed by (key, row), so finite differences see them too
GRADIENT_CASES = {name: (cfg, None) for name, cfg in FAMILY.items()}
GRADIENT_CASES["untied head with dropout"] = (FAMILY["untied head"], Dropout(p=0.3, key=step_key(seed=1, step=7),
                                                                             first_row=4))


@pytest.mark.parametrize("cfg, drop", GRADIENT_CASES.values(), ids=GRADIENT_CASES.keys())
def test_whole_model_gradient_matches_finite_differences(cfg, drop):
    layout = ParamLayout(cfg)
    params = init_params(cfg, seed=3, dtype=np.float64)
    # larger weights than GPT-2's init so that every path carries signal
    params += np.random.default_rng(4).normal(scale=0.3, size=params.shape)
    tokens, targets = batch(cfg, B=2, T=5, seed=5)
    acts = Activations(cfg, 2, 5, dtype=np.float64)
    w = layout.tensors(params)
    grad = np.full(layout.size, np.nan)  # every element must be written
    n = tokens.size

    def mean_loss():
        return float(crossentropy_forward(forward(w, acts, tokens, drop), targets.reshape(-1))[0]) / n

    total = forward_backward(w, layout.tensors(grad), acts, tokens, targets, 1.0 / n, drop)
    assert np.all(np.isfinite(grad)) and mean_loss() == pytest.approx(total / n, rel=1e-12)
    if drop is not None:  # the mask does something
        assert total != pytest.approx(loss_sum(w, acts, tokens, targets), rel=1e-3)
    idx, numeric = numerical_grad(mean_loss, params, n_probe=400)
    assert_grad_close(grad[idx], numeric, rtol=1e-4, atol=1e-8)
    # the unused position rows (T=5 of block_size 6) get exactly zero
    assert np.all(layout.views(grad)["wpe.weight"][5:] == 0.0)


def test_an_untied_head_is_its_own_matrix_after_the_blocks():
    layout = ParamLayout(FAMILY["untied head"])
    assert list(layout.shapes)[-1] == "lm_head.weight" and layout.shapes["lm_head.weight"] == (11, 8)
    assert layout.size == ParamLayout(TINY).size + 11 * 8
    params = init_params(FAMILY["untied head"], seed=0)
    w = layout.tensors(params)
    assert w.head is w.lm_head and not np.shares_memory(w.head, w.wte)
    assert ParamLayout(TINY).tensors(init_params(TINY, seed=0)).lm_head is None


def test_forward_backward_returns_the_summed_cross_entropy():
    layout = ParamLayout(TINY)
    params = init_params(TINY, seed=0)
    tokens, targets = batch(TINY, 3, 6, seed=1)
    acts = Activations(TINY, 3, 6)
    w = layout.tensors(params)
    logits = forward(w, acts, tokens).astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
    expected = -logp[np.arange(18), targets.reshape(-1)].sum()
    grad = np.zeros(layout.size, np.float32)
    got = forward_backward(w, layout.tensors(grad), acts, tokens, targets, 1.0)
    assert got == pytest.approx(expected, rel=1e-5)
    # at initialisation the model is close to uniform over the vocabulary
    assert got / 18 == pytest.approx(np.log(TINY.vocab_size), rel=0.05)


def test_initialisation_follows_gpt2():
    cfg = GPTConfig(vocab_size=500, block_size=64, n_layer=4, n_head=4, n_embd=64)
    views = ParamLayout(cfg).views(init_params(cfg, seed=0))
    assert views["wte.weight"].std() == pytest.approx(0.02, rel=0.02)
    assert views["h.1.attn.c_attn.weight"].std() == pytest.approx(0.02, rel=0.03)
    assert views["h.1.attn.c_proj.weight"].std() == pytest.approx(0.02 / np.sqrt(8), rel=0.05)
    assert views["h.3.mlp.c_proj.weight"].std() == pytest.approx(0.02 / np.sqrt(8), rel=0.05)
    assert np.all(views["h.0.ln_1.weight"] == 1.0) and np.all(views["ln_f.weight"] == 1.0)
    assert np.all(views["h.2.mlp.c_fc.bias"] == 0.0) and np.all(views["ln_f.bias"] == 0.0)


def test_layout_is_one_contiguous_buffer_in_gpt2_order():
    layout = ParamLayout(TINY)
    names = list(layout.shapes)
    assert names[:3] == ["wte.weight", "wpe.weight", "h.0.ln_1.weight"]
    assert names[-2:] == ["ln_f.weight", "ln_f.bias"]
    assert layout.shapes["h.1.attn.c_attn.weight"] == (8, 24)  # Conv1D layout (in, out)
    flat = np.arange(layout.size, dtype=np.float32)
    views = layout.views(flat)
    assert sum(v.size for v in views.values()) == layout.size
    assert all(np.shares_memory(v, flat) for v in views.values())


def test_two_threads_at_once_give_exactly_what_each_gives_alone():
    cfg = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=32)
    layout = ParamLayout(cfg)
    params = init_params(cfg, seed=7)
    before = params.copy()
    w = layout.tensors(params)
    batches = [batch(cfg, 4, 32, seed=s) for s in (10, 11)]

    def run(tokens, targets, out, acts):
        for _ in range(5):
            out["loss"] = forward_backward(w, layout.tensors(out["grad"]), acts, tokens, targets, 1.0 / tokens.size)

    alone = []
    for tokens, targets in batches:
        out = {"grad": np.zeros(layout.size, np.float32)}
        run(tokens, targets, out, Activations(cfg, 4, 32))
        alone.append(out)
    together = [{"grad": np.zeros(layout.size, np.float32)} for _ in batches]
    threads = [threading.Thread(target=run, args=(*b, o, Activations(cfg, 4, 32))) for b, o in zip(batches, together)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together):
        assert a["loss"] == b["loss"]
        assert np.array_equal(a["grad"], b["grad"])
    assert np.array_equal(params, before)  # parameters are only read
