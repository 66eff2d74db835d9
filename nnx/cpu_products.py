"""Matrix products for CPUs with AVX-512, compiled by Numba: c = a b on float32, 16 lanes at a time.

A candidate to BLAS's products for an MLP: whether it is faster depends on the CPU and on the
kernels BLAS picked (OpenBLAS's AVX2 kernels run at most 8 lanes wide), so nnx/cpu_choice.py
measures both on the run's own network and takes the faster. It is one kernel, the classic
register tile: a block of 4 rows of c by 64 columns (16 vectors of 16 lanes, 16 of the 32 zmm
registers) stays in registers while the sum over k runs,

    c[i + r, j : j + 64] += a(i + r, kk) * b[kk, j : j + 64]     for kk = 0 .. k - 1, r = 0 .. 3,

each step 4 loads of b's row, 4 broadcasts of a and 16 fused multiply-adds. `a` is addressed
through strides, so the same loop takes y = x W (a = x, read along its rows) and dW = x^T dy
(a = x^T, read down x's columns) without a transposed copy.

Every element of c is one chain of multiply-adds over kk in order, whatever tile, thread or
chunk computes it, so results do not depend on the thread count (OpenBLAS's do), and a tile that
runs past the edge is moved back over rows or columns already done, which it writes again with
the same bits: any m >= 4 and n >= 64 go through the one tile, and narrower outputs (a last
layer's 10) through a second, 8 rows of one vector, masked below 16 columns, for m >= 8. They
differ from BLAS's in the last bits (another order of the sums).

Vector values are LLVM's <16 x float>, a Numba type of its own below with four operations (load,
store, zero, multiply-add by a broadcast scalar), so that the tile's sixteen sums are SSA values
LLVM keeps in registers: written as loops over a local array, LLVM keeps them in memory.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

LANES = 16
TILE_ROWS, TILE_COLUMNS = 4, 4 * LANES
NARROW_ROWS = 8  # rows of the tile for outputs narrower than TILE_COLUMNS
_V = ir.VectorType(ir.FloatType(), LANES)


class _F32x16(types.Type):
    def __init__(self) -> None:
        super().__init__(name="f32x16")


f32x16 = _F32x16()


@register_model(_F32x16)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm: Any, fe_type: Any) -> None:
        super().__init__(dmm, fe_type, _V)


def _address(context: Any, builder: Any, array_type: Any, array: Any, i: Any) -> Any:
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [i]), _V.as_pointer())


@intrinsic
def load(typingctx: Any, a: Any, i: Any) -> Any:
    """a[i : i + 16] of a 1-d float32 array, as one vector (no bounds check)."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.load(_address(context, builder, sig.args[0], args[0], args[1]), align=4)

    return f32x16(a, types.intp), codegen


@intrinsic
def store(typingctx: Any, a: Any, i: Any, v: Any) -> Any:
    """a[i : i + 16] = v (no bounds check)."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        builder.store(args[2], _address(context, builder, sig.args[0], args[0], args[1]), align=4)
        return context.get_dummy_value()

    return types.none(a, types.intp, f32x16), codegen


def _first_lanes(builder: Any, count: Any) -> Any:
    """The mask <lane < count> of a vector's lanes."""
    lanes = ir.Constant(ir.VectorType(ir.IntType(64), LANES), list(range(LANES)))
    every = builder.insert_element(ir.Constant(lanes.type, ir.Undefined), count, ir.Constant(ir.IntType(32), 0))
    every = builder.shuffle_vector(
        every, ir.Constant(lanes.type, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), LANES), None)
    )
    return builder.icmp_signed("<", lanes, every)


_MASK = ir.VectorType(ir.IntType(1), LANES)


@intrinsic
def load_first(typingctx: Any, a: Any, i: Any, count: Any) -> Any:
    """a[i : i + count] (count < 16) into a vector's first lanes, zeros after; nothing past them is read."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ptr = _address(context, builder, sig.args[0], args[0], args[1])
        masked = ir.FunctionType(_V, [ptr.type, ir.IntType(32), _MASK, _V])
        load = cgutils.get_or_insert_function(builder.module, masked, "llvm.masked.load.v16f32.p0")
        return builder.call(
            load, [ptr, ir.Constant(ir.IntType(32), 4), _first_lanes(builder, args[2]), ir.Constant(_V, None)]
        )

    return f32x16(a, types.intp, types.intp), codegen


@intrinsic
def store_first(typingctx: Any, a: Any, i: Any, count: Any, v: Any) -> Any:
    """a[i : i + count] = v's first lanes (count < 16); nothing past them is written."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ptr = _address(context, builder, sig.args[0], args[0], args[1])
        masked = ir.FunctionType(ir.VoidType(), [_V, ptr.type, ir.IntType(32), _MASK])
        store = cgutils.get_or_insert_function(builder.module, masked, "llvm.masked.store.v16f32.p0")
        builder.call(store, [args[3], ptr, ir.Constant(ir.IntType(32), 4), _first_lanes(builder, args[2])])
        return context.get_dummy_value()

    return types.none(a, types.intp, types.intp, f32x16), codegen


@intrinsic
def zero(typingctx: Any) -> Any:
    """A vector of zeros."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return ir.Constant(_V, None)

    return f32x16(), codegen


@intrinsic
def fma(typingctx: Any, s: Any, v: Any, acc: Any) -> Any:
    """acc + s v, s a float32 broadcast to every lane, in one rounding (vfmadd231ps)."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        lane0 = builder.insert_element(ir.Constant(_V, ir.Undefined), args[0], ir.Constant(ir.IntType(32), 0))
        every_lane = ir.Constant(ir.VectorType(ir.IntType(32), LANES), None)
        s = builder.shuffle_vector(lane0, ir.Constant(_V, ir.Undefined), every_lane)
        fused = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V, [_V, _V, _V]), "llvm.fma.v16f32")
        return builder.call(fused, [s, args[1], args[2]])

    return f32x16(types.float32, f32x16, f32x16), codegen


_jit = numba.njit(cache=True, nogil=True)


@_jit
def _tile(a: Any, p: Any, c: Any, i: int, j: int, k: int, sa_i: int, sa_k: int, sp: int, sc: int) -> None:
    """c[i : i + 4, j : j + 64] = sum_kk a(i + r, kk) p[kk, 0 : 64], where a(r, kk) is
    a[r sa_i + kk sa_k], the panel p's rows are sp apart and c's sc; all flat float32 arrays."""
    c00, c01, c02, c03 = zero(), zero(), zero(), zero()
    c10, c11, c12, c13 = zero(), zero(), zero(), zero()
    c20, c21, c22, c23 = zero(), zero(), zero(), zero()
    c30, c31, c32, c33 = zero(), zero(), zero(), zero()
    r0 = i * sa_i
    r1, r2, r3 = r0 + sa_i, r0 + 2 * sa_i, r0 + 3 * sa_i
    for kk in range(k):
        o = kk * sp
        p0, p1, p2, p3 = load(p, o), load(p, o + 16), load(p, o + 32), load(p, o + 48)
        o = kk * sa_k
        a0, a1, a2, a3 = a[r0 + o], a[r1 + o], a[r2 + o], a[r3 + o]
        c00, c01, c02, c03 = fma(a0, p0, c00), fma(a0, p1, c01), fma(a0, p2, c02), fma(a0, p3, c03)
        c10, c11, c12, c13 = fma(a1, p0, c10), fma(a1, p1, c11), fma(a1, p2, c12), fma(a1, p3, c13)
        c20, c21, c22, c23 = fma(a2, p0, c20), fma(a2, p1, c21), fma(a2, p2, c22), fma(a2, p3, c23)
        c30, c31, c32, c33 = fma(a3, p0, c30), fma(a3, p1, c31), fma(a3, p2, c32), fma(a3, p3, c33)
    rows = ((c00, c01, c02, c03), (c10, c11, c12, c13), (c20, c21, c22, c23), (c30, c31, c32, c33))
    for r in range(TILE_ROWS):
        v0, v1, v2, v3 = rows[r]
        o = (i + r) * sc + j
        store(c, o, v0)
        store(c, o + 16, v1)
        store(c, o + 32, v2)
        store(c, o + 48, v3)


@_jit
def _tile_narrow(
    a: Any, p: Any, c: Any, i: int, j: int, k: int, sa_i: int, sa_k: int, sp: int, sc: int, lanes: int
) -> None:
    """c[i : i + 8, j : j + lanes] = sum_kk a(i + r, kk) p[kk, j : j + lanes], for outputs
    narrower than a tile (a last layer's 10): eight rows of one vector each, so that eight sums
    are in flight, as the fused multiply-add's latency needs; `lanes` < 16 masks the vector."""
    c0, c1, c2, c3, c4, c5, c6, c7 = zero(), zero(), zero(), zero(), zero(), zero(), zero(), zero()
    r0 = i * sa_i
    for kk in range(k):
        v = load(p, kk * sp + j) if lanes == LANES else load_first(p, kk * sp + j, lanes)
        o = r0 + kk * sa_k
        c0, c1 = fma(a[o], v, c0), fma(a[o + sa_i], v, c1)
        c2, c3 = fma(a[o + 2 * sa_i], v, c2), fma(a[o + 3 * sa_i], v, c3)
        c4, c5 = fma(a[o + 4 * sa_i], v, c4), fma(a[o + 5 * sa_i], v, c5)
        c6, c7 = fma(a[o + 6 * sa_i], v, c6), fma(a[o + 7 * sa_i], v, c7)
    rows = (c0, c1, c2, c3, c4, c5, c6, c7)
    for r in range(NARROW_ROWS):
        if lanes == LANES:
            store(c, (i + r) * sc + j, rows[r])
        else:
            store_first(c, (i + r) * sc + j, lanes, rows[r])


@_jit
def _pack(b: Any, panel: Any, j: int, width: int, k: int, sb_k: int, sb_j: int) -> None:
    """panel[kk, 0 : width] = b(kk, j : j + width), b(kk, jj) at b[kk sb_k + jj sb_j], the panel's
    rows 64 apart; read along b's rows whichever way they run."""
    if sb_j == 1:
        for kk in range(k):
            panel[kk * TILE_COLUMNS : kk * TILE_COLUMNS + width] = b[kk * sb_k + j : kk * sb_k + j + width]
    else:
        for jj in range(width):
            for kk in range(k):
                panel[kk * TILE_COLUMNS + jj] = b[kk * sb_k + (j + jj) * sb_j]


@_jit
def product_rows(
    a: Any, b: Any, c: Any, first: int, last: int, n: int, k: int, sa_i: int, sa_k: int, sb_k: int, sb_j: int
) -> None:
    """Rows first..last-1 of c (m, n) = a b (flat arrays): a(i, kk) at a[i sa_i + kk sa_k], b(kk, j)
    at b[kk sb_k + j sb_j]. At least 4 rows, 8 where n < 64. b is read in panels of 64 columns (all
    of it where narrower), copied into a contiguous block unless b's rows already are one: rows 4n
    bytes apart would all fall in the same few cache sets (n = 1,024: every row in one of the
    L1's sets), and every tile reads the panel again; a transposed b (dx = dy W^T) is copied too."""
    width = min(n, TILE_COLUMNS)
    in_place = sb_j == 1 and n == width
    panel = b if in_place else np.empty(k * TILE_COLUMNS, dtype=b.dtype)
    sp = sb_k if in_place else TILE_COLUMNS
    for j0 in range(0, n, TILE_COLUMNS):
        j = max(min(j0, n - TILE_COLUMNS), 0)
        if not in_place:
            _pack(b, panel, j, width, k, sb_k, sb_j)
        if width == TILE_COLUMNS:
            for i in range(first, last, TILE_ROWS):
                _tile(a, panel, c, min(i, last - TILE_ROWS), j, k, sa_i, sa_k, sp, n)
        else:
            lanes = min(width, LANES)
            for g in range(0, width, LANES):
                jg = min(g, width - LANES) if width >= LANES else 0
                for i in range(first, last, NARROW_ROWS):
                    _tile_narrow(a, panel, c, min(i, last - NARROW_ROWS), jg, k, sa_i, sa_k, sp, n, lanes)


@numba.njit(cache=True, nogil=True, parallel=True)
def product(
    a: Any, b: Any, c: Any, m: int, n: int, k: int, sa_i: int, sa_k: int, sb_k: int, sb_j: int, parts: int
) -> None:
    """product_rows over all m rows, cut into `parts` runs of whole blocks of 8 rows (at least one
    each), on Numba's threads."""
    blocks = m // NARROW_ROWS
    for p in prange(parts):
        first = blocks * p // parts * NARROW_ROWS
        last = m if p == parts - 1 else blocks * (p + 1) // parts * NARROW_ROWS
        product_rows(a, b, c, first, last, n, k, sa_i, sa_k, sb_k, sb_j)


@_jit
def sum_rows(x: Any, out: Any) -> None:
    """out = sum_i x[i, :], x (m, n) flat, rows in order: the bias's gradient, 1^T dy, which
    would otherwise go to BLAS (gemv) and wake its threads, whose spinning after each call takes
    the cores from these products' (an epoch of 784-1024-1024-10: 3.8 s with BLAS's sums, 1.7 s)."""
    n = out.shape[0]
    out[:] = 0
    for i in range(x.shape[0] // n if n else 0):
        for j in range(n):
            out[j] += x[i * n + j]


def applies(m: int, n: int, k: int) -> bool:
    """Whether the tiles take c (m, n) = a b with a sum over k: one tile must fit."""
    return k >= 1 and n >= 1 and m >= (TILE_ROWS if n >= TILE_COLUMNS else NARROW_ROWS)


def warm() -> None:
    """Compile (or load from the cache) the products, on arrays of a few tiles."""
    a = np.ones((NARROW_ROWS, 2), dtype=np.float32)
    for n in (1, TILE_COLUMNS + 1):
        b = np.ones((2, n), dtype=np.float32)
        c = np.empty((NARROW_ROWS, n), dtype=np.float32)
        product_rows(a.reshape(-1), b.reshape(-1), c.reshape(-1), 0, NARROW_ROWS, n, 2, 2, 1, n, 1)
        product(a.reshape(-1), b.reshape(-1), c.reshape(-1), NARROW_ROWS, n, 2, 2, 1, n, 1, 1)
        sum_rows(c.reshape(-1), c[0].copy())
