"""Dropout masks: a pure function of (seed, step, site, global row, position, channel)."""

import numpy as np
import pytest

from cllm.kernels.dropout import Dropout, dropout_forward, reference_keep, site_key, step_key
from cllm.kernels.model import Activations, GPTConfig, ParamLayout, forward_backward, init_params


def mask(drop: Dropout, site: int, rows: int, T: int, C: int) -> np.ndarray:
    x = np.ones((rows * T, C), np.float32)
    dropout_forward(x, T, *drop.at(site))
    return x.reshape(rows, T, C)


def test_the_kernel_follows_the_reference_and_drops_p_of_the_elements():
    drop = Dropout(p=0.25, key=step_key(seed=5, step=3), first_row=2)
    got = mask(drop, site=4, rows=8, T=16, C=64)
    assert set(np.unique(got)) == {0.0, np.float32(1 / 0.75)}
    assert (got == 0).mean() == pytest.approx(0.25, abs=0.02)
    key = site_key(drop.key, 4)
    expected = [[[reference_keep(key, 2 + row, t, c, 0.25) for c in range(64)] for t in range(16)] for row in range(8)]
    assert np.array_equal(got != 0, np.array(expected))


def test_a_micro_batch_gets_the_same_mask_on_any_worker():
    key = step_key(seed=1, step=10)
    whole = mask(Dropout(0.5, key, first_row=0), site=1, rows=6, T=8, C=32)
    first = mask(Dropout(0.5, key, first_row=0), site=1, rows=2, T=8, C=32)
    rest = mask(Dropout(0.5, key, first_row=2), site=1, rows=4, T=8, C=32)
    assert np.array_equal(whole, np.concatenate([first, rest]))


def test_masks_differ_between_steps_sites_and_seeds_and_repeat_for_the_same():
    def m(seed, step, site):
        return mask(Dropout(0.5, step_key(seed, step), 0), site, rows=2, T=8, C=32)

    base = m(1, 1, 1)
    assert np.array_equal(base, m(1, 1, 1))
    for other in (m(1, 2, 1), m(1, 1, 2), m(2, 1, 1)):
        assert 0.3 < (other != base).mean() < 0.7  # independent masks disagree on about half


def test_a_split_batch_with_dropout_adds_up_to_the_whole():
    cfg = GPTConfig(vocab_size=31, block_size=8, n_layer=2, n_head=2, n_embd=16, tied_head=False)
    layout = ParamLayout(cfg)
    w = layout.tensors(init_params(cfg, seed=0))
    rng = np.random.default_rng(0)
    tokens, targets = (rng.integers(0, 31, size=(4, 8)).astype(np.int32) for _ in range(2))
    key = step_key(seed=3, step=2)
    whole = np.zeros(layout.size, np.float32)
    loss = forward_backward(w, layout.tensors(whole), Activations(cfg, 4, 8), tokens, targets, 1.0, Dropout(0.2, key, 0))
    parts, part_loss = np.zeros(layout.size, np.float32), 0.0
    for first in (0, 2):
        segment = np.zeros(layout.size, np.float32)
        part_loss += forward_backward(w, layout.tensors(segment), Activations(cfg, 2, 8), tokens[first:first + 2],
                                      targets[first:first + 2], 1.0, Dropout(0.2, key, first))
        parts += segment
    assert part_loss == pytest.approx(loss, rel=1e-6)
    np.testing.assert_allclose(parts, whole, rtol=1e-4, atol=1e-6)
