"""The precision of the matrix products: float32, or bfloat16 with float32 accumulation.

Two bfloat16 products, chosen at run time from /proc/cpuinfo:

- on a CPU with AMX-BF16 and Intel's oneMKL installed (the optional ``bf16`` extra,
  ``pip install 'cllm[bf16]'``), ``cblas_gemm_bf16bf16f32`` of oneMKL, loaded through ctypes
  from the environment's ``lib`` directory and run on MKL's sequential threading layer (the
  worker pool is the parallelism): its AMX tiles are several times faster than vector code;
- on any other CPU with AVX512_BF16, CLLM's own product (``dotbf16``, VDPBF16PS through numba),
  which needs no extra library. oneMKL on such CPUs (AMD's among them) converts to float32
  and runs no faster than sgemm.

``unavailable()`` says why neither can run. Master weights, gradients and optimizer state stay
float32. ``Weights16`` rounds the weights once per step, after the update; ``Products16`` rounds a
worker's float32 activations into its two scratch buffers per product. A bfloat16 array is
uint16: the upper half of a float32.
"""

import ctypes
import ctypes.util
import functools
import sys
from pathlib import Path

import numpy as np

from . import dotbf16
from .blas import call, gemm
from .jit import kernel

PRECISIONS = ("fp32", "bf16")
CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # either runs bfloat16 dot products in hardware
MKL_THREADING_SEQUENTIAL = 1
FIRST, SECOND = 0, 1  # the scratch buffer of a product's first and second operand


@kernel
def round_to_bf16(out, inp):
    # out (N,) uint16 = inp (N,) float32 rounded to the nearest bfloat16, ties to even; NaN stays NaN
    bits = inp.view(np.uint32)
    for i in range(inp.shape[0]):
        b = bits[i]
        rounded = np.uint16((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
        out[i] = np.uint16(0x7FC0) if inp[i] != inp[i] else rounded


def bf16_to_float32(x: np.ndarray) -> np.ndarray:
    """The float32 values of bfloat16 ``x`` (uint16), a new array."""
    return (x.astype(np.uint32) << 16).view(np.float32)


def cpu_flags(cpuinfo: str) -> set:
    """The bfloat16 flags of CPU_FLAGS that the first processor of ``cpuinfo`` lists."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split()) & set(CPU_FLAGS)
    return set()


def read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def find_mkl() -> str | None:
    """The path of oneMKL's single dynamic library, in this environment or on the loader's path."""
    for directory in (Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"):
        found = sorted(directory.glob("libmkl_rt.so*"))
        if found:
            return str(found[0])
    return ctypes.util.find_library("mkl_rt")


@functools.cache
def mkl_gemm():
    """``cblas_gemm_bf16bf16f32`` of oneMKL on its sequential threading layer, or None without oneMKL.
    Loaded on first use, so a float32 run never maps the library."""
    path = find_mkl()
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    lib.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
    lib.MKL_Set_Threading_Layer(MKL_THREADING_SEQUENTIAL)
    fn = lib.cblas_gemm_bf16bf16f32
    fn.restype = None
    fn.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                        ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
    return fn


def backend(cpuinfo: str | None = None) -> str | None:
    """The bfloat16 product that runs here: "onemkl" (AMX-BF16 with oneMKL installed), "avx512"
    (CLLM's own, on AVX512_BF16), or None. ``cpuinfo`` defaults to this machine's."""
    flags = cpu_flags(read_cpuinfo() if cpuinfo is None else cpuinfo)
    if "amx_bf16" in flags and mkl_gemm() is not None:
        return "onemkl"
    if "avx512_bf16" in flags:
        return "avx512"
    return None


def unavailable(cpuinfo: str | None = None) -> str | None:
    """Why bfloat16 products cannot run fast here (None: they can). ``cpuinfo`` defaults to this machine's."""
    info = read_cpuinfo() if cpuinfo is None else cpuinfo
    if backend(info) is not None:
        return None
    if cpu_flags(info):
        return "the CPU has AMX-BF16 but not AVX512_BF16, and oneMKL is not installed: pip install 'cllm[bf16]'"
    return "the CPU has neither AVX512_BF16 nor AMX-BF16 instructions"


class Products32:
    """A worker's matrix products in float32: out (+)= a @ b through BLAS."""

    def operand(self, x: np.ndarray, slot: int) -> np.ndarray:
        return x

    def __call__(self, out: np.ndarray, a: np.ndarray, b: np.ndarray, accumulate: bool = False) -> None:
        gemm(out, a, b, accumulate)


FLOAT32 = Products32()


class Products16:
    """A worker's matrix products in bfloat16 with float32 accumulation, and the scratch they round into.

    An operand that is already bfloat16 (a ``Weights16`` view, or one ``operand`` rounded) is used
    as it is; a float32 first operand is rounded into the FIRST buffer, a second into the SECOND.
    The product is ``backend()``'s (or ``product``'s): oneMKL's, or ``dotbf16``'s with this
    worker's packing buffers.
    """

    def __init__(self, first: int, second: int, product: str | None = None):
        self.scratch = (np.zeros(first, np.uint16), np.zeros(second, np.uint16))
        if (product or backend()) == "onemkl":
            self.gemm = functools.partial(call, mkl_gemm())
        else:
            self.gemm = dotbf16.Scratch()

    def operand(self, x: np.ndarray, slot: int) -> np.ndarray:
        """``x`` (M,K) rounded to bfloat16 into buffer ``slot``, for use in several products."""
        if x.dtype == np.uint16:
            return x
        if not x.flags.c_contiguous and x.T.flags.c_contiguous:
            return self.operand(x.T, slot).T
        out = self.scratch[slot][:x.size].reshape(x.shape)
        round_to_bf16(out.reshape(-1), np.ascontiguousarray(x).reshape(-1))
        return out

    def __call__(self, out: np.ndarray, a: np.ndarray, b: np.ndarray, accumulate: bool = False) -> None:
        self.gemm(out, self.operand(a, FIRST), self.operand(b, SECOND), accumulate)


class Weights16:
    """The model's parameters rounded to bfloat16, in the same flat layout; ``refresh`` after each update."""

    def __init__(self, layout):
        self.layout = layout
        self.flat = np.zeros(layout.size, np.uint16)

    def refresh(self, params: np.ndarray, start: int = 0, stop: int | None = None) -> None:
        """Round params[start:stop] (the whole buffer by default) into the same slice."""
        round_to_bf16(self.flat[start:stop], params[start:stop])

    def tensors(self, weights):
        """``weights`` (float32 ``Tensors`` of the parameters) with the matrices of the products in
        bfloat16: every block's four linear weights, and ``lm_head`` holding the head, tied or not.
        The embeddings, biases and LayerNorm gains stay float32."""
        low = self.layout.tensors(self.flat)
        blocks = tuple(p._replace(c_attn_weight=q.c_attn_weight, attn_c_proj_weight=q.attn_c_proj_weight,
                                  c_fc_weight=q.c_fc_weight, mlp_c_proj_weight=q.mlp_c_proj_weight)
                       for p, q in zip(weights.blocks, low.blocks))
        return weights._replace(blocks=blocks, lm_head=low.head)
