"""Each learning-rate schedule against its formula."""

import math

import pytest

from cllm.coord.training.schedule import Plateau, Schedule, learning_rate


def test_constant_with_warmup():
    s = Schedule("constant", lr=0.01, warmup_steps=10)
    assert [learning_rate(s, t) for t in (1, 5, 10, 11, 5000)] == pytest.approx([0.001, 0.005, 0.01, 0.01, 0.01])


def test_constant_without_warmup():
    assert learning_rate(Schedule("constant", lr=0.5), 1) == 0.5


def test_linear_decays_to_the_floor_and_stays():
    s = Schedule("linear", lr=1.0, warmup_steps=10, decay_steps=110, min_lr=0.1)
    for t in (10, 35, 60, 110, 500):
        expected = 1.0 + (0.1 - 1.0) * min(1.0, (t - 10) / 100)
        assert learning_rate(s, t) == pytest.approx(expected)
    assert learning_rate(s, 60) == pytest.approx(0.55)


def test_cosine_follows_half_a_cosine():
    s = Schedule("cosine", lr=1e-3, warmup_steps=100, decay_steps=2000, min_lr=1e-4)
    assert learning_rate(s, 50) == pytest.approx(5e-4)
    assert learning_rate(s, 100) == pytest.approx(1e-3)
    for t in (100, 575, 1050, 1525, 2000, 3000):
        p = min(1.0, (t - 100) / 1900)
        assert learning_rate(s, t) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * p)))
    assert learning_rate(s, 1050) == pytest.approx(5.5e-4)


def test_exponential_is_geometric_between_peak_and_floor():
    s = Schedule("exponential", lr=1.0, decay_steps=100, min_lr=0.01)
    assert learning_rate(s, 50) == pytest.approx(0.1)
    assert learning_rate(s, 100) == pytest.approx(0.01)
    ratios = [learning_rate(s, t + 1) / learning_rate(s, t) for t in range(1, 99)]
    assert max(ratios) == pytest.approx(min(ratios))


def test_cyclical_is_a_triangle_between_floor_and_peak():
    s = Schedule("cyclical", lr=1.0, min_lr=0.2, cycle_steps=4)
    got = [learning_rate(s, t) for t in range(1, 18)]
    expected = [0.2, 0.4, 0.6, 0.8, 1.0, 0.8, 0.6, 0.4, 0.2, 0.4, 0.6, 0.8, 1.0, 0.8, 0.6, 0.4, 0.2]
    assert got == pytest.approx(expected)


def test_plateau_reduces_by_the_factor_after_patience_stalled_evaluations_down_to_the_floor():
    s = Schedule("plateau", lr=0.1, warmup_steps=4, min_lr=0.02, factor=0.5, patience=2)
    plateau = Plateau()
    reduced = [plateau.observe(s, loss) for loss in (3.0, 2.9, 2.95, 2.9, 2.8, 2.85, 2.85, 2.9, 2.9, 2.7)]
    # 2.95 and 2.9 do not beat 2.9: reduce; 2.8 is better; 2.85, 2.85: reduce; 2.9, 2.9: reduce; 2.7 is better
    assert reduced == [False, False, False, True, False, False, True, False, True, False]
    assert (plateau.reductions, plateau.best, plateau.stalled) == (3, 2.7, 0)
    assert learning_rate(s, 2, 0) == pytest.approx(0.05)  # warm-up first
    assert [learning_rate(s, 100, k) for k in range(4)] == pytest.approx([0.1, 0.05, 0.025, 0.02])  # floor 0.02
