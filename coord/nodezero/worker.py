"""What a worker sphere runs on its pool thread: its micro-batch's kernels, into its own segment."""

import time

import numpy as np

from cllm.kernels.dropout import Dropout
from cllm.kernels.model import Activations, GPTConfig, ParamLayout, Tensors, forward_backward, loss_sum


class WorkerKernels:
    """A worker's activations (allocated once per micro-batch shape) and its gradient segment."""

    def __init__(self, cfg: GPTConfig, layout: ParamLayout, segment: np.ndarray, index: int,
                 precision: str = "fp32"):
        self.cfg, self.precision = cfg, precision
        self.index = index  # the worker's position among the leaves
        self.segment = segment
        self.grads = layout.tensors(segment)
        self.acts = {}  # (B, T) -> Activations; training and evaluation shapes

    def activations(self, B: int, T: int) -> Activations:
        if (B, T) not in self.acts:
            if len(self.acts) >= 2:
                self.acts.clear()
            self.acts[B, T] = Activations(self.cfg, B, T, precision=self.precision)
        return self.acts[B, T]

    def train(self, weights: Tensors, tokens: np.ndarray, targets: np.ndarray, dloss: float,
              drop: Dropout | None = None) -> tuple:
        """Forward and backward of rows ``tokens`` (B,T), with ``drop``'s dropout masks; returns
        (summed loss, seconds)."""
        start = time.perf_counter()
        acts = self.activations(*tokens.shape)
        total = forward_backward(weights, self.grads, acts, tokens, targets, dloss, drop)
        return total, time.perf_counter() - start

    def evaluate(self, weights: Tensors, tokens: np.ndarray, targets: np.ndarray) -> tuple:
        """Forward only; returns (summed loss, seconds)."""
        start = time.perf_counter()
        total = loss_sum(weights, self.activations(*tokens.shape), tokens, targets)
        return total, time.perf_counter() - start
