"""Fused loops for the CPU, compiled by Numba: the chains of nnx/ops.py in one pass each.

NumPy runs a chain such as the optimizer's update as separate passes, each a call of a few
microseconds with its own temporary: SGD with Nesterov momentum is six passes over the
parameters, the loss a dozen calls on a (64, 10) array. At the default MLP's batch of 64 a step
is about 0.16 ms, and those calls were 0.06 ms of it. Here each chain is one loop over its
elements, which LLVM vectorises: the CPU's counterpart of nnx/gpu_kernels.py.

Each loop does the reference's arithmetic in the same order on the array's own dtype (scalars are
cast to it first, as NumPy casts a Python float, and LLVM contracts nothing into fused
multiply-adds without fast-math), so the updates, the batch conversion and the activations give
the reference's bits; the loss takes NumPy's own exp but libm's log and a sum in double, and
differs from NumPy's in the last bit. `nogil`: the kernels also run inside the chunks of
nnx/cpu_ops.py's threads.

Compiled on first use and cached on disk (Numba's cache, beside this file or in the user's cache
folder), so a run after the first loads them in milliseconds; `warm` compiles them before a
training loop starts its clock. Imported only by nnx/cpu_ops.py, which falls back to the NumPy
reference where Numba is missing.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)


@_jit
def normalize_rows(images: Any, idx: Any, scale: Any, shift: Any, x: Any) -> int:
    """x[r] = images[idx[r]] * scale - shift, from uint8; images (N, F), x (len(idx), F). Returns
    the first position r whose idx[r] is outside 0..N-1 (nothing written), or -1.

    The rows are scattered over the training set, far out of cache: a first pass reads one byte
    of each 64-byte line of every row, loads that do not wait on one another, so that many of
    the misses are in flight at once; the conversion then finds its rows in cache (a batch of 64
    MNIST rows: 10.9 -> 6.8 us, against 7.2 us for NumPy's gather alone)."""
    n, f = images.shape
    touched = 0
    for r in range(idx.shape[0]):
        i = idx[r]
        if i < 0 or i >= n:
            return r
        for j in range(0, f, 64):
            touched += images[i, j]
        if f:
            touched += images[i, f - 1]
    for r in range(idx.shape[0]):
        i = idx[r]
        for j in range(f):
            x[r, j] = images[i, j] * scale - shift
    return -1 if touched >= 0 else -2  # (uses the sum, which is never negative, so it is not dropped)


@_jit
def add_bias(a: Any, b: Any) -> None:
    """a += b in place; a (N, F), b (F,). (NumPy's broadcast add of a (64, 10) batch's bias took
    1.0 us, most of it the ufunc's setting up; this loop 0.3 us.)"""
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            a[i, j] += b[j]


@_jit
def bias_relu(a: Any, b: Any) -> None:
    """a = max(a + b, 0) in place; a (N, F), b (F,). NaN stays NaN, as with xp.maximum."""
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            s = a[i, j] + b[j]
            a[i, j] = s if (s > 0 or s != s) else 0


@_jit
def relu_backward(dy: Any, y: Any, dx: Any) -> None:
    """dx = dy * 1[y > 0], a product as in the reference: NaN or inf in dy stays NaN where y <= 0."""
    for i in range(dy.shape[0]):
        dx[i] = dy[i] * (1 if y[i] > 0 else 0)


@_jit
def _row_max(z: Any, i: int) -> Any:
    """max_k z[i, k] for the softmax's shift. A NaN in the row need not carry into it: the row's
    sum of exponentials is NaN either way, and with it the row's loss and gradient. Written
    without branches: on each step's new logits their mispredictions took as long as the work."""
    m = z[i, 0]
    for k in range(1, z.shape[1]):
        v = z[i, k]
        m = v if v > m else m
    return m


@_jit
def shift_by_row_max(z: Any, s: Any) -> None:
    """s = z - max_k z[:, k] row by row: the softmax's exponents, all <= 0 (or NaN)."""
    for i in range(z.shape[0]):
        m = _row_max(z, i)
        for k in range(z.shape[1]):
            s[i, k] = z[i, k] - m


@_jit
def cross_entropy_from_exp(z: Any, y: Any, dz: Any, limit: float) -> float:
    """The mean loss of logits z (N, C) for labels y (N,), given dz = exp(z - m) row by row, and
    dz = (p - onehot(y)) / N written over it (the arithmetic of `Ops.softmax_cross_entropy`). The
    exp is NumPy's vectorised one, between this loop and shift_by_row_max: one loop without
    branches calling libm's exp per element took 48 us for 1,024 rows of new logits, these two
    and NumPy's exp 24. A label outside 0..C-1 makes its row's loss and gradient NaN. The rows'
    losses add up in double; a sum past `limit` (the largest number of z's dtype) is inf, as the
    reference's sum in that dtype would be: a diverging run's loss (rows of 1e37 at a learning
    rate of 1e9) must reach the divergence guard as inf, not as a finite mean."""
    n, c = z.shape
    total = 0.0
    for i in range(n):
        sum_e = z.dtype.type(0)
        for k in range(c):
            sum_e += dz[i, k]
        t = y[i]
        if t < 0 or t >= c:
            total += math.nan
            for k in range(c):
                dz[i, k] = math.nan
            continue
        # log p_t = (z_t - m) - log sum_j exp(z_j - m)
        total += math.log(sum_e) - (z[i, t] - _row_max(z, i))
        for k in range(c):  # dz = (e / sum_e - [k = t]) / n, the reference's three steps, in one pass
            q = dz[i, k] / sum_e
            q = q - 1 if k == t else q
            dz[i, k] = q / n
    if abs(total) > limit:
        return math.inf
    return total / n if n else 0.0


@_jit
def count_correct(z: Any, y: Any) -> int:
    """How many rows of z (N, C) have their first maximum at y (NumPy's argmax: a NaN counts as
    the maximum, the first NaN wins). Without branches, as _row_max (1,024 new rows: 30 -> 17 us)."""
    correct = 0
    for i in range(z.shape[0]):
        best, top = 0, z[i, 0]
        for k in range(1, z.shape[1]):
            v = z[i, k]
            take = (v > top) | ((v != v) & (top == top))  # larger, or the first NaN
            best = k if take else best
            top = v if take else top
        correct += best == y[i]
    return correct


@_jit
def sgd(p: Any, g: Any, lr: Any, wd: Any) -> None:
    """p <- p - lr (g + wd p)   (no velocity buffer)."""
    for i in range(p.shape[0]):
        d = g[i] + wd * p[i] if wd else g[i]
        p[i] -= lr * d


@_jit
def _flushed(x: Any, tiny: Any) -> Any:
    """x * [|x| >= tiny], tiny the dtype's smallest normal number: `flush_subnormals` of nnx/ops.py
    for one element (a zero of x's sign below tiny; NaN stays NaN)."""
    return x if not (-tiny < x < tiny) else x * 0


@_jit
def sgd_momentum(p: Any, g: Any, v: Any, lr: Any, mu: Any, nesterov: bool, wd: Any, tiny: Any) -> None:
    """d = g + wd p;  v <- flush(mu v + d);  p <- p - lr (d + mu v) (Nesterov) or p - lr v."""
    for i in range(p.shape[0]):
        d = g[i] + wd * p[i] if wd else g[i]
        v[i] = _flushed(mu * v[i] + d, tiny)
        p[i] -= lr * (d + mu * v[i]) if nesterov else lr * v[i]


@_jit
def adam(
    p: Any, g: Any, m: Any, v: Any, lr: Any, b1: Any, one_minus_b1: Any, b2: Any, one_minus_b2: Any,
    eps: Any, c1: Any, c2: Any, wd: Any, decay: Any, decoupled: bool, tiny: Any,
) -> None:  # fmt: skip
    """d = g (+ wd p);  m <- flush(b1 m + (1 - b1) d);  v <- flush(b2 v + (1 - b2) d^2);
    p <- p - lr (m / c1) / (sqrt(v / c2) + eps), c1 = 1 - b1^t, c2 = 1 - b2^t; AdamW scales p by
    `decay` = 1 - lr wd first."""
    for i in range(p.shape[0]):
        if decoupled:
            if wd:
                p[i] *= decay
            d = g[i]
        else:
            d = g[i] + wd * p[i] if wd else g[i]
        m[i] = _flushed(b1 * m[i] + one_minus_b1 * d, tiny)
        v[i] = _flushed(b2 * v[i] + one_minus_b2 * (d * d), tiny)
        p[i] -= lr * (m[i] / c1) / (math.sqrt(v[i] / c2) + eps)


@_jit
def rmsprop(p: Any, g: Any, s: Any, lr: Any, rho: Any, one_minus_rho: Any, eps: Any, wd: Any, tiny: Any) -> None:
    """d = g + wd p;  s <- flush(rho s + (1 - rho) d^2);  p <- p - lr d / (sqrt(s) + eps)."""
    for i in range(p.shape[0]):
        d = g[i] + wd * p[i] if wd else g[i]
        s[i] = _flushed(rho * s[i] + one_minus_rho * (d * d), tiny)
        p[i] -= lr * d / (math.sqrt(s[i]) + eps)


def warm(dtype: Any) -> None:
    """Compile (or load from the cache) every kernel for `dtype`, on arrays of a few elements."""
    t = np.dtype(dtype).type
    one = t(1)
    a, b = np.ones((2, 3), dtype=dtype), np.ones(3, dtype=dtype)
    normalize_rows(np.ones((2, 3), dtype=np.uint8), np.zeros(2, dtype=np.int64), one, one, a)
    add_bias(a, b)
    bias_relu(a, b)
    relu_backward(b, b, b.copy())
    shift_by_row_max(a, a.copy())
    cross_entropy_from_exp(a, np.zeros(2, dtype=np.int64), a.copy(), float(np.finfo(dtype).max))
    count_correct(a, np.zeros(2, dtype=np.int64))
    p, g, m, v = (np.zeros(3, dtype=dtype) for _ in range(4))
    sgd(p, g, one, one)
    sgd_momentum(p, g, v, one, one, True, one, one)
    adam(p, g, m, v, one, one, one, one, one, one, one, one, one, one, True, one)
    rmsprop(p, g, v, one, one, one, one, one, one)
