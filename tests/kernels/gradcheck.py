"""Central finite differences in float64."""

import numpy as np


def numerical_grad(f, x, eps=1e-6, n_probe=None, seed=0):
    """d f() / d x by central differences; f reads x. Probes every element, or
    ``n_probe`` random ones (returning their flat indices too)."""
    flat = x.reshape(-1)
    if n_probe is None:
        idx = np.arange(flat.size)
    else:
        idx = np.random.default_rng(seed).choice(flat.size, size=min(n_probe, flat.size), replace=False)
    grad = np.zeros(idx.size)
    for n, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        grad[n] = (up - down) / (2 * eps)
    return idx, grad


def assert_grad_close(analytic, numeric, rtol=1e-5, atol=1e-7):
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)
