"""Optimizer updates against their textbook formulas, step by step."""

import numpy as np
import pytest

from cllm.kernels.optim import adam_update, adamw_update, sgd_update


def problem(seed=0, n=257):
    rng = np.random.default_rng(seed)
    return rng.normal(size=n), [rng.normal(size=n) for _ in range(6)]


def reference_adam(param, grads, lr, b1, b2, eps, wd, decoupled, scale):
    p, m, v = param.copy(), np.zeros_like(param), np.zeros_like(param)
    for t, g in enumerate(grads, start=1):
        g = g * scale
        if not decoupled:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        direction = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        p = p - lr * (direction + (wd * p if decoupled else 0.0))
    return p


@pytest.mark.parametrize("decoupled", [True, False])
def test_adam_and_adamw_follow_their_formulas(decoupled):
    param, grads = problem()
    p, m, v = param.copy(), np.zeros_like(param), np.zeros_like(param)
    update = adamw_update if decoupled else adam_update
    for t, g in enumerate(grads, start=1):
        update(p, g, m, v, 1e-2, 0.9, 0.99, 1e-8, 0.1, t, 0.5)
    np.testing.assert_allclose(p, reference_adam(param, grads, 1e-2, 0.9, 0.99, 1e-8, 0.1, decoupled, 0.5), rtol=1e-12)


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_with_momentum_and_nesterov_follows_its_formula(momentum, nesterov):
    param, grads = problem(1)
    p, buf = param.copy(), np.zeros_like(param)
    ref, ref_buf = param.copy(), None
    for t, g in enumerate(grads, start=1):
        sgd_update(p, g, buf, 0.1, momentum, nesterov, 0.01, t, 2.0)
        d = 2.0 * g + 0.01 * ref
        if momentum:
            ref_buf = d if ref_buf is None else momentum * ref_buf + d
            d = d + momentum * ref_buf if nesterov else ref_buf
        ref = ref - 0.1 * d
    np.testing.assert_allclose(p, ref, rtol=1e-12)


def test_updates_match_torch_when_it_is_installed():
    torch = pytest.importorskip("torch")  # an optional oracle; the formula tests above always run
    param, grads = problem(2)
    for name, make, ours in [
        ("adamw", lambda w: torch.optim.AdamW([w], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1), "adamw"),
        ("adam", lambda w: torch.optim.Adam([w], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1), "adam"),
        ("sgd", lambda w: torch.optim.SGD([w], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1), "sgd"),
    ]:
        w = torch.tensor(param.copy(), requires_grad=True)
        opt = make(w)
        p, s0, s1 = param.copy(), np.zeros_like(param), np.zeros_like(param)
        for t, g in enumerate(grads, start=1):
            w.grad = torch.tensor(g)
            opt.step()
            if ours == "sgd":
                sgd_update(p, g, s0, 0.1, 0.9, True, 0.1, t, 1.0)
            else:
                (adamw_update if ours == "adamw" else adam_update)(p, g, s0, s1, 1e-2, 0.9, 0.95, 1e-8, 0.1, t, 1.0)
        np.testing.assert_allclose(p, w.detach().numpy(), rtol=1e-10, err_msg=name)
