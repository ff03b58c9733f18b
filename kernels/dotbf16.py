"""A bfloat16 matrix product with float32 accumulation on AVX512_BF16, compiled by numba.

out (M,N) float32 (+)= a (M,K) @ b (K,N), the operands bfloat16 (uint16, as ``precision``
rounds them) with any strides. It is the classic blocked product of BLAS
libraries: the K axis in blocks of KC, a block of B packed once per K block, a block of A
(MC rows) packed per K block and row block, and a register-tile micro-kernel over the packed
panels, MR rows by NR columns of out, held in 24 of the 32 zmm registers.

Packing stores each pair of consecutive k as one 32-bit word, the layout of the VDPBF16PS
instruction, which multiplies 16 such pairs by 16 pairs and adds both products to 16 float32
lanes: twice the multiply-adds of a float32 FMA per instruction. The instruction comes from
LLVM's ``llvm.x86.avx512bf16.dpbf16ps.512`` through a numba intrinsic, so the product only
runs where the CPU has AVX512_BF16 (``precision.unavailable`` checks before any call).

Panels past the edge of a matrix are padded with zeros (an odd K gets a zero pair), and a tile
that overhangs out is computed into a scratch tile and the part inside copied out.
"""

import functools

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import kernel, kernel_of
from .simd import broadcast

MR, NR = 12, 32  # out rows and columns of the micro-kernel's register tile (2 zmm per row)
KC, MC = 512, 96  # k and rows per packed block: a B panel (KC x NR, 32 KiB) in L1, an A block in L2
LANES = 16


class BFloat(ir.types.Type):
    """LLVM's ``bfloat`` type, which llvmlite's IR builder does not name."""

    def _to_string(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, BFloat)

    def __hash__(self):
        return hash("bfloat")


@intrinsic
def tile_product(typingctx, pairs, a_panel, b_panel, c, ldc, add):
    """c[MR, NR] (+= if add) = the sum over ``pairs`` k-pairs of a_panel's pairs times b_panel's:
    a_panel holds MR words per pair, b_panel NR words per pair; addresses as integers, ldc in floats."""
    sig = types.void(types.intp, types.intp, types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        pairs, a_addr, b_addr, c_addr, ldc, add = args
        f32, i32 = ir.FloatType(), ir.IntType(32)
        floats, words, halves = ir.VectorType(f32, LANES), ir.VectorType(i32, LANES), ir.VectorType(BFloat(), 2 * LANES)
        dot = cgutils.get_or_insert_function(builder.module, ir.FunctionType(floats, [floats, halves, halves]),
                                             "llvm.x86.avx512bf16.dpbf16ps.512")
        index = pairs.type
        vectors = NR // LANES
        acc = [[cgutils.alloca_once_value(builder, ir.Constant(floats, None)) for _ in range(vectors)]
               for _ in range(MR)]
        a_words = builder.inttoptr(a_addr, i32.as_pointer())
        b_words = builder.inttoptr(b_addr, words.as_pointer())
        with cgutils.for_range(builder, pairs) as loop:
            p = loop.index
            bs = [builder.bitcast(builder.load(builder.gep(b_words, [builder.add(builder.mul(p, index(vectors)), index(v))]),
                                               align=4), halves) for v in range(vectors)]
            for r in range(MR):
                word = builder.load(builder.gep(a_words, [builder.add(builder.mul(p, index(MR)), index(r))]), align=4)
                a = builder.bitcast(broadcast(builder, word, words), halves)
                for v in range(vectors):
                    builder.store(builder.call(dot, [builder.load(acc[r][v]), a, bs[v]]), acc[r][v])
        c_floats = builder.inttoptr(c_addr, f32.as_pointer())
        adding = builder.icmp_signed("!=", add, add.type(0))
        for r in range(MR):
            for v in range(vectors):
                where = builder.gep(c_floats, [builder.add(builder.mul(index(r), ldc), index(LANES * v))])
                where = builder.bitcast(where, floats.as_pointer())
                with builder.if_then(adding):
                    builder.store(builder.fadd(builder.load(acc[r][v]), builder.load(where, align=4)), acc[r][v])
                builder.store(builder.load(acc[r][v]), where, align=4)
        return context.get_dummy_value()

    return sig, codegen


@kernel
def pack(src, first, count, k0, kc, width, out):
    # rows first..first+count of src (X,K) (bfloat16), k in k0..k0+kc, into panels of ``width``
    # rows: word out[(panel * pairs + p) * width + r] holds src[x, k0+2p] low and src[x, k0+2p+1]
    # high, x = first + panel * width + r; zero past the last row and the last k. Each word is
    # built from two k-rows of the transposed source, a vectorisable interleave along x.
    t = src.T
    pairs = (kc + 1) // 2
    stop = first + count
    for panel in range((count + width - 1) // width):
        base = panel * pairs * width
        x0 = first + panel * width
        if x0 + width <= stop:
            for p in range(kc // 2):
                lo, hi = t[k0 + 2 * p, x0:x0 + width], t[k0 + 2 * p + 1, x0:x0 + width]
                block = out[base + p * width:base + (p + 1) * width]
                for r in range(width):
                    block[r] = np.uint32(lo[r]) | (np.uint32(hi[r]) << np.uint32(16))
            if kc % 2:
                lo = t[k0 + kc - 1, x0:x0 + width]
                block = out[base + (pairs - 1) * width:base + pairs * width]
                for r in range(width):
                    block[r] = np.uint32(lo[r])
            continue
        for p in range(pairs):
            for r in range(width):
                x, k = x0 + r, k0 + 2 * p
                word = np.uint32(0)
                if x < stop:
                    word = np.uint32(t[k, x])
                    if 2 * p + 1 < kc:
                        word |= np.uint32(t[k + 1, x]) << np.uint32(16)
                out[base + p * width + r] = word


@kernel
def pack_words(words, first, count, p0, pairs, width, out):
    # pack's panels from words (X,K/2), src viewed as uint32 when its rows run along k and K is
    # even: each word already holds its pair, so a panel is a transpose of whole words
    stop = first + count
    for panel in range((count + width - 1) // width):
        base = panel * pairs * width
        for r in range(width):
            x = first + panel * width + r
            if x < stop:
                row = words[x, p0:p0 + pairs]
                for p in range(pairs):
                    out[base + p * width + r] = row[p]
            else:
                for p in range(pairs):
                    out[base + p * width + r] = 0


@kernel
def pack_panels(src, words, first, count, k0, kc, width, out):
    # pack's panels, through pack_words when ``words`` (src's uint32 view) is not empty
    if words.shape[0]:
        pack_words(words, first, count, k0 // 2, kc // 2, width, out)
    else:
        pack(src, first, count, k0, kc, width, out)


HALVES, WORDS = types.Array(types.uint16, 2, "A"), types.Array(types.uint32, 2, "A")
BUFFER = types.Array(types.uint32, 1, "C")
SIGNATURE = types.void(types.Array(types.float32, 2, "A"), HALVES, WORDS, HALVES, WORDS, types.boolean, BUFFER, BUFFER,
                       types.Array(types.float32, 2, "C"))


def product(out, a, a_words, bt, bt_words, accumulate, a_packed, b_packed, tile):
    # out (M,N) (+)= a (M,K) @ bt.T, bt (N,K), each with its words (see pack_words) or an empty
    # (0,0); scratch: a_packed >= MC*KC/2 words, b_packed >= ceil(N/NR)*NR*KC/2, tile (MR,NR) float32
    M, N = out.shape
    K = a.shape[1]
    ldc = out.strides[0] // out.itemsize
    b_panels = (N + NR - 1) // NR
    for k0 in range(0, K, KC):
        kc = min(KC, K - k0)
        pairs = (kc + 1) // 2
        pack_panels(bt, bt_words, 0, N, k0, kc, NR, b_packed)
        add = 1 if accumulate or k0 > 0 else 0
        for i0 in range(0, M, MC):
            mc = min(MC, M - i0)
            pack_panels(a, a_words, i0, mc, k0, kc, MR, a_packed)
            for jp in range(b_panels):
                j = jp * NR
                b_panel = b_packed[jp * pairs * NR:].ctypes.data
                for ip in range((mc + MR - 1) // MR):
                    i = i0 + ip * MR
                    a_panel = a_packed[ip * pairs * MR:].ctypes.data
                    if i + MR <= M and j + NR <= N:
                        tile_product(pairs, a_panel, b_panel, out[i:, j:].ctypes.data, ldc, add)
                        continue
                    tile_product(pairs, a_panel, b_panel, tile.ctypes.data, NR, 0)
                    for r in range(min(MR, M - i)):
                        for n in range(min(NR, N - j)):
                            out[i + r, j + n] = out[i + r, j + n] + tile[r, n] if add else tile[r, n]


def packing_bytes(widest: int) -> int:
    """Memory of a ``Scratch`` whose widest product has ``widest`` output columns."""
    return 4 * (MC * KC // 2 + -(-widest // NR) * NR * (KC // 2) + MR * NR)


@functools.cache
def compiled_product():
    """``product`` compiled for SIGNATURE, on first use: one signature for every layout of the
    operands (C, F and strided views all pass as "A"), so it compiles once, not once per
    combination of layouts; and a float32 run, or a CPU without AVX512_BF16, never compiles it."""
    return kernel_of(SIGNATURE)(product)


class Scratch:
    """One worker's packing buffers, grown to the largest product it has run."""

    def __init__(self):
        self.a = np.zeros(MC * KC // 2, np.uint32)
        self.b = np.zeros(0, np.uint32)
        self.tile = np.zeros((MR, NR), np.float32)

    def __call__(self, out: np.ndarray, a: np.ndarray, b: np.ndarray, accumulate: bool) -> None:
        """out (M,N) float32 (+)= a (M,K) @ b (K,N), both bfloat16 (uint16), any strides."""
        M, N = out.shape
        if M == 0 or N == 0:
            return
        if a.shape[1] == 0:
            if not accumulate:
                out[...] = 0.0
            return
        size = -(-N // NR) * NR * (KC // 2)
        if self.b.size < size:
            self.b = np.zeros(size, np.uint32)
        bt = b.T
        compiled_product()(out, a, words(a), bt, words(bt), accumulate, self.a, self.b, self.tile)


NO_WORDS = np.zeros((0, 0), np.uint32)


def words(x: np.ndarray) -> np.ndarray:
    """x (X,K) bfloat16 viewed as (X,K/2) uint32 words of k-pairs when its rows run along k, K is
    even and every row starts on a 4-byte boundary; an empty array otherwise."""
    if (x.shape[1] % 2 or x.strides[1] != x.itemsize or x.strides[0] % 4 or x.ctypes.data % 4
            or x.shape[0] == 0 or x.shape[1] == 0):
        return NO_WORDS
    return x.view(np.uint32)
