"""A 64-byte float vector for register-blocked products inside kernels.

LLVM vectorises a loop whose accumulators live in memory (one load and one store per
multiply-add), but it does not keep a block of accumulators in registers across an outer
loop. ``Vector`` is one AVX-512 register's worth of floats (16 float32 or 8 float64) as a
value: a product written with a few of them as local variables keeps its whole block of
accumulators in registers, and each load of the other operand feeds every accumulator.
On hardware with narrower vectors LLVM splits each operation; the results are the same.

    acc = splat(zero)                     # every lane = zero
    acc = fma(a[i, k], load(row, j), acc)  # acc + a[i,k] * row[j:j+lanes]
    store(out_row, j, acc)

``load`` and ``store`` take a C-contiguous 1-D array and the index of the first element;
they do not check bounds. ``copy_scaled`` copies a scaled run of a row a Vector at a time;
``prefetch`` asks for a cache line ahead of its use.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

from .jit import FASTMATH

VECTOR_BYTES = 64


class Vector(types.Type):
    """``lanes`` floats of ``dtype`` in one register."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.lanes = VECTOR_BYTES // (dtype.bitwidth // 8)
        super().__init__(name=f"Vector({dtype} x {self.lanes})")


@register_model(Vector)
class VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


def vector_pointer(context, builder, arrty, arr, index):
    data = context.make_array(arrty)(context, builder, arr).data
    element = builder.gep(data, [index])
    vecty = context.get_value_type(Vector(arrty.dtype))
    return builder.bitcast(element, vecty.as_pointer())


def is_float_row(arr):
    return isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C" and isinstance(arr.dtype, types.Float)


@intrinsic
def load(typingctx, arr, index):
    """arr[index:index+lanes] as a Vector (arr a C-contiguous 1-D float array)."""
    if not is_float_row(arr) or not isinstance(index, types.Integer):
        return None
    sig = Vector(arr.dtype)(arr, index)

    def codegen(context, builder, signature, args):
        ptr = vector_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load(ptr, align=signature.args[0].dtype.bitwidth // 8)

    return sig, codegen


@intrinsic
def store(typingctx, arr, index, vec):
    """arr[index:index+lanes] = vec."""
    if not is_float_row(arr) or not isinstance(vec, Vector) or vec.dtype != arr.dtype:
        return None
    sig = types.none(arr, index, vec)

    def codegen(context, builder, signature, args):
        ptr = vector_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store(args[2], ptr, align=signature.args[0].dtype.bitwidth // 8)
        return context.get_dummy_value()

    return sig, codegen


def broadcast(builder, value, vecty):
    undef = ir.Constant(vecty, ir.Undefined)
    one = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(ir.IntType(32), vecty.count), None))


@intrinsic
def splat(typingctx, x):
    """A Vector with every lane = x (a float)."""
    if not isinstance(x, types.Float):
        return None
    sig = Vector(x)(x)

    def codegen(context, builder, signature, args):
        return broadcast(builder, args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@intrinsic
def fma(typingctx, x, y, acc):
    """acc + x * y, lane by lane; x may be a float of the vectors' type (then every lane is x)."""
    if not isinstance(acc, Vector) or y != acc or not (x == acc or x == acc.dtype):
        return None
    sig = acc(x, y, acc)

    def codegen(context, builder, signature, args):
        x, y, acc = args
        if not isinstance(x.type, ir.VectorType):
            x = broadcast(builder, x, y.type)
        product = builder.fmul(x, y, flags=sorted(FASTMATH))
        return builder.fadd(product, acc, flags=sorted(FASTMATH))

    return sig, codegen


@intrinsic
def lanes(typingctx, arr):
    """How many elements of ``arr``'s dtype one Vector holds (a compile-time constant)."""
    if not isinstance(arr, types.Array) or not isinstance(arr.dtype, types.Float):
        return None
    sig = types.intp(arr)

    def codegen(context, builder, signature, args):
        return context.get_constant(types.intp, Vector(signature.args[0].dtype).lanes)

    return sig, codegen


@intrinsic
def mul(typingctx, x, y):
    """x * y, lane by lane; x may be a float of the vector's type."""
    if not isinstance(y, Vector) or not (x == y or x == y.dtype):
        return None
    sig = y(x, y)

    def codegen(context, builder, signature, args):
        x, y = args
        if not isinstance(x.type, ir.VectorType):
            x = broadcast(builder, x, y.type)
        return builder.fmul(x, y, flags=sorted(FASTMATH))

    return sig, codegen


def copy_scaled(dst, i, src, j, n, scale):
    """dst[i:i+n] = scale * src[j:j+n] for 1-D float arrays (compiled only inside kernels): a Vector at
    a time when both are contiguous."""
    dst[i:i + n] = scale * src[j:j + n]


@overload(copy_scaled, jit_options={"fastmath": FASTMATH})
def copy_scaled_impl(dst, i, src, j, n, scale):
    if is_float_row(dst) and is_float_row(src) and src.dtype == dst.dtype:
        def vector_copy(dst, i, src, j, n, scale):
            w = lanes(dst)
            s = dst.dtype.type(scale)
            whole = n - n % w
            for d in range(0, whole, w):
                store(dst, i + d, mul(s, load(src, j + d)))
            for d in range(whole, n):
                dst[i + d] = src[j + d] * s
        return vector_copy

    def element_copy(dst, i, src, j, n, scale):
        for d in range(n):
            dst[i + d] = src[j + d] * scale
    return element_copy


@intrinsic
def prefetch(typingctx, arr, index):
    """Ask for the cache line holding arr[index] (a 1-D array) ahead of its use; never faults."""
    if not isinstance(arr, types.Array) or arr.ndim != 1 or not isinstance(index, types.Integer):
        return None
    sig = types.none(arr, index)

    def codegen(context, builder, signature, args):
        arrty = signature.args[0]
        ary = context.make_array(arrty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, arrty, ary, [args[1]])
        i8p = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p] + [ir.IntType(32)] * 3),
                                            "llvm.prefetch.p0i8")
        i32 = ir.IntType(32)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen
