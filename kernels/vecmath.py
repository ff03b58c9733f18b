"""Elementary functions that vectorise: ``exp``, ``exp2``, ``exp2_normal`` and ``exp2_nonpositive``
for the float32 kernels, and ``maxnum`` and ``maxnum_of_numbers`` for maximum reductions.

numba compiles ``np.exp`` on float32 to a scalar libm call per element (about 7 ns); this
``exp`` is a range reduction and a polynomial that LLVM turns into AVX-512/AVX2 code
(well under 1 ns per element), with a relative error below 4e-7 (a few float32 ulps).
``exp2`` is the cheaper form for callers that fold log2(e) into a product they already
compute (exp(x - m) = 2**(x * log2e - m * log2e), one fused multiply-add): a degree-5
polynomial, relative error below 3e-7. On float64 both are numpy's functions, so the
float64 gradient checks see exact calculus.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload, register_jitable

from .jit import FASTMATH

LOG2E = 1.4426950408889634  # log2(e); the kernels take it in their dtype
LN2_HI = np.float32(0.693145751953125)  # ln 2 split so that n * LN2_HI is exact
LN2_LO = np.float32(1.4286068203094173e-06)
EXP_LO = np.float32(-87.3)  # below this exp underflows float32; above EXP_HI it overflows
EXP_HI = np.float32(88.7)
# minimax coefficients of exp(r) on [-ln2/2, ln2/2], degree 6
C2, C3, C4 = np.float32(0.5), np.float32(0.16666415), np.float32(0.041666217)
C5, C6 = np.float32(0.0083751315), np.float32(0.0013948585)


# minimax coefficients of 2**f on [-1/2, 1/2], degree 5 (relative error 9e-8 in exact arithmetic)
D1, D2, D3 = np.float32(0.6931470036506653), np.float32(0.24022231996059418), np.float32(0.05550685152411461)
D4, D5 = np.float32(0.009671973995864391), np.float32(0.0013277654070407152)
EXP2_LO = np.float32(-127.0)  # 2**-127 and below flush to 0; 2**128 and above are inf
EXP2_HI = np.float32(128.0)
NORMAL_LO = np.float32(-126.0)  # exp2_normal's range: 2**n for whole n in it is a normal float
NORMAL_HI = np.float32(127.0)
ROUNDER = np.float32(12582912.0)  # 1.5 * 2**23: t + ROUNDER holds round(t) in its low bits for |t| < 2**22


def max_intrinsic(flags):
    # the codegen of llvm.maxnum with these fast-math flags on the call
    def codegen(context, builder, signature, args):
        ty = args[0].type
        name = "llvm.maxnum.f32" if ty == ir.FloatType() else "llvm.maxnum.f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty, ty]), name)
        return builder.call(fn, args, fastmath=flags)

    return codegen


@intrinsic
def maxnum(typingctx, a, b):
    """The larger of two floats of one type; a NaN loses to a number. LLVM vectorises a running
    ``maxnum`` (it does not vectorise numba's ``max``, whose NaN rule differs)."""
    if a != b or not isinstance(a, types.Float):
        return None
    return a(a, b), max_intrinsic(())


@intrinsic
def maxnum_of_numbers(typingctx, a, b):
    """``maxnum`` for operands that are never NaN, which lets LLVM reduce with plain vector maxima,
    without maxnum's NaN checks (three times faster over rows of 128). A NaN gives an arbitrary
    result: callers must not branch on it, and a NaN score still shows through its own exponential."""
    if a != b or not isinstance(a, types.Float):
        return None
    return a(a, b), max_intrinsic(("nnan",))


@intrinsic
def unreassociated(typingctx, x):
    """``x``, behind a fence that fast-math reassociation does not cross: ``s * c - unreassociated(m * c)``
    stays one fused multiply-add per element instead of being factored into ``(s - m) * c``."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        name = "llvm.arithmetic.fence.f32" if ty == ir.FloatType() else "llvm.arithmetic.fence.f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty]), name)
        return builder.call(fn, args)

    return x(x), codegen


@intrinsic
def int32_bits_as_float32(typingctx, x):
    """The float32 whose bit pattern is the int32 ``x``."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def float32_bits_as_int32(typingctx, x):
    """The int32 whose bit pattern is the float32 ``x``."""
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@register_jitable
def split_exp2(t):
    # (n, 2**f) for float32 t = n + f, n whole and |f| <= 1/2: 2**f by the degree-5 polynomial
    n = np.rint(t)
    f = t - n
    return n, ((((D5 * f + D4) * f + D3) * f + D2) * f + D1) * f + np.float32(1.0)


@register_jitable
def pow2(n):
    # 2**n for a whole float32 n in [-127, 128], written into the exponent bits: the last step of exp and
    # exp2 after their range reductions. -127 gives 0 (exp2's underflow) and 128 gives inf (both overflow)
    return int32_bits_as_float32((np.int32(n) + np.int32(127)) << np.int32(23))


def fast_on_float32(fn, fallback):
    """Registers the decorated function as ``fn`` inside kernels on float32, and ``fallback`` (a
    numpy function) on any other type; ``fn`` itself, called from Python, is ``fallback``."""
    def register(fast):
        fast = register_jitable(fastmath=FASTMATH)(fast)

        @overload(fn, jit_options={"fastmath": FASTMATH})
        def dispatch(x):
            if x != types.float32:
                return lambda x: fallback(x)
            return lambda x: fast(x)

        return fast

    return register


def exp(x):
    """e**x: fast on float32, ``np.exp`` otherwise (compiled only inside kernels)."""
    return np.exp(x)


@fast_on_float32(exp, np.exp)
def fast_exp(x):
    x = min(max(x, EXP_LO), EXP_HI)  # numba's min and max keep a NaN x: the result stays NaN
    n = np.floor(x * np.float32(LOG2E) + np.float32(0.5))
    r = x - n * LN2_HI - n * LN2_LO
    p = C6 * r + C5
    p = p * r + C4
    p = p * r + C3
    p = p * r + C2
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * pow2(n)


def exp2(t):
    """2**t: fast on float32, ``np.exp2`` otherwise (compiled only inside kernels)."""
    return np.exp2(t)


@fast_on_float32(exp2, np.exp2)
def fast_exp2(t):
    t = min(max(t, EXP2_LO), EXP2_HI)  # numba's min and max keep a NaN t: the result stays NaN
    n, p = split_exp2(t)
    return p * pow2(n)


def exp2_normal(t):
    """2**t with t clamped to [-126, 127], so always a normal float: fast on float32, ``np.exp2``
    otherwise (compiled only inside kernels)."""
    return np.exp2(t)


@register_jitable
def normal_exp2(t):
    # 2**t for float32 t in [-126, 127]: exp2's polynomial with its power of two added straight into the
    # exponent bits (one multiply fewer), taken from the low bits of t + ROUNDER shifted into place (np.rint's
    # rounding, without a conversion to an integer). For sums of exponentials, where what lies 2**126 below
    # the largest term does not count
    p = split_exp2(t)[1]
    return int32_bits_as_float32(float32_bits_as_int32(p) + (float32_bits_as_int32(t + ROUNDER) << np.int32(23)))


@fast_on_float32(exp2_normal, np.exp2)
def fast_exp2_normal(t):
    return normal_exp2(min(max(t, NORMAL_LO), NORMAL_HI))


def exp2_nonpositive(t):
    """``exp2_normal`` for t <= 0, such as a score less its row's maximum, with the one clamp that needs:
    fast on float32, ``np.exp2`` otherwise (compiled only inside kernels). A t above 0 must stay small
    (a rounding's worth); NaN stays NaN."""
    return np.exp2(t)


@fast_on_float32(exp2_nonpositive, np.exp2)
def fast_exp2_nonpositive(t):
    return normal_exp2(max(t, NORMAL_LO))
