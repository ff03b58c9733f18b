"""Numba nogil kernels: forward and backward of every layer, reductions, optimizer updates."""
