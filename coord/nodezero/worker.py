"""What a worker sphere runs on its pool thread: one micro-batch's kernels, into the offered segment."""

import time

import numpy as np

from cllm.kernels.dropout import Dropout
from cllm.kernels.model import Activations, GPTConfig, Tensors, forward_backward, scores

SHAPES_KEPT = 4  # (rows, seq_len) shapes of activations a worker keeps: uneven cuts, training and evaluation


class WorkerKernels:
    """A worker's activations, allocated once per micro-batch shape and reused."""

    def __init__(self, cfg: GPTConfig, index: int, precision: str = "fp32"):
        self.cfg, self.precision = cfg, precision
        self.index = index  # the worker's position among the leaves
        self.acts = {}  # (B, T) -> Activations

    def activations(self, B: int, T: int) -> Activations:
        if (B, T) not in self.acts:
            if len(self.acts) >= SHAPES_KEPT:
                self.acts.clear()
            self.acts[B, T] = Activations(self.cfg, B, T, precision=self.precision)
        return self.acts[B, T]

    def train(self, weights: Tensors, grads: Tensors, tokens: np.ndarray, targets: np.ndarray, dloss: float,
              drop: Dropout | None = None) -> tuple:
        """Forward and backward of rows ``tokens`` (B,T) into ``grads``, with ``drop``'s dropout masks;
        returns (summed loss, seconds)."""
        start = time.perf_counter()
        total = forward_backward(weights, grads, self.activations(*tokens.shape), tokens, targets, dloss, drop)
        return total, time.perf_counter() - start

    def evaluate(self, weights: Tensors, tokens: np.ndarray, targets: np.ndarray) -> tuple:
        """Forward only; returns (summed loss, tokens whose target was the likeliest, seconds)."""
        start = time.perf_counter()
        total, hits = scores(weights, self.activations(*tokens.shape), tokens, targets)
        return total, hits, time.perf_counter() - start
