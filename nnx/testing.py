"""Checks that prove the math: numerical gradients and backend parity.

Used by nnx's own tests; public so that anyone adding a layer can check it the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from nnx.backend import Backend

# A network holding every layer kind nnx has, for tests that must cover them all (parity, export).
EVERY_LAYER = [
    {"type": "conv2d", "out": 10, "kernel": 3, "padding": 1},  # 9 columns a pixel <= 10 outputs: kept for dW
    {"type": "batchnorm"},
    {"type": "leaky_relu", "alpha": 0.1},
    {"type": "maxpool2d", "size": 2},
    {"type": "conv2d", "out": 8, "kernel": 3, "stride": 2},  # 90 > 8: built again for dW
    {"type": "elu", "alpha": 1.0},
    {"type": "avgpool2d", "size": 2, "stride": 1},
    {"type": "flatten"},
    {"type": "dropout", "p": 0.3},
    {"type": "linear", "out": 32},
    {"type": "batchnorm"},
    {"type": "gelu"},
    {"type": "linear", "out": 24},
    {"type": "tanh"},
    {"type": "linear", "out": 16},
    {"type": "sigmoid"},
    {"type": "linear", "out": 10},
    {"type": "relu"},
    {"type": "linear", "out": 10},
    {"type": "softmax"},
]

# Per-dtype tolerances for comparing two backends (relative error), when none is measured.
PARITY_RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
# Margin over the measured float32 rounding error, and the least tolerance (16 float32 ulps).
SUMMATION_ORDER_FACTOR = 8.0
FLOAT32_FLOOR = 16 * float(np.finfo(np.float32).eps)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(|a|, |b|, tiny): one number for the whole array."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), 1e-300)
    return float(np.abs(a - b).max(initial=0.0) / scale)


def numerical_gradient(f: Callable[[], float], x: Any, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() with respect to every element of x (changed in place
    and restored): df/dx_i ~ (f(x + eps e_i) - f(x - eps e_i)) / (2 eps). Small shapes only."""
    grad = np.zeros(x.shape, dtype=np.float64)
    for index in np.ndindex(*x.shape):  # element by element: works for any memory layout
        saved = float(x[index])
        x[index] = saved + eps
        plus = f()
        x[index] = saved - eps
        minus = f()
        x[index] = saved
        grad[index] = (plus - minus) / (2 * eps)
    return grad


def directional_check(
    f: Callable[[], float], x: Any, analytic: np.ndarray, rng: np.random.Generator, eps: float = 1e-6
) -> float:
    """For large x: compare <grad, v> with (f(x + eps v) - f(x - eps v)) / (2 eps) for a random
    unit direction v; returns the relative error of the two numbers."""
    v = rng.standard_normal(x.shape)
    v /= np.linalg.norm(v)
    saved = x.copy()
    x += eps * v
    plus = f()
    x[...] = saved - eps * v
    minus = f()
    x[...] = saved
    numeric = (plus - minus) / (2 * eps)
    exact = float(np.sum(analytic * v))
    return abs(numeric - exact) / max(abs(numeric), abs(exact), 1e-12)


def measured_tolerances(
    run: Callable[[Backend], Any],
    float32: Backend,
    float64: Backend,
    factor: float = SUMMATION_ORDER_FACTOR,
    floor: float = FLOAT32_FLOOR,
) -> dict[str, float]:
    """float32 tolerances, one per output of `run`, from the measured effect of rounding and
    summation order rather than one guess for everything.

    The float32 run on `float32` (the CPU) is compared with the float64 run: e = relative error of
    that output, which is what float32 arithmetic in the CPU's summation order costs. Another
    device adds the same numbers in another order (tree reductions, other GEMM blocking, fused
    multiply-adds), with an error of the same size, so two float32 results of one computation lie
    within about 2e of each other; `factor` (8) leaves room for a somewhat worse order, and `floor`
    (16 ulps) covers outputs that happen to be exact on the CPU. A wrong kernel is off by far more.
    """
    low = _to_host(run(float32), float32)
    exact = _to_host(run(float64), float64)
    return {key: max(factor * relative_error(low[key], exact[key]), floor) for key in low}


def assert_parity(
    run: Callable[[Backend], Any],
    first: Backend,
    second: Backend,
    rtol: float | dict[str, float] | None = None,
    check_dtype: bool = True,
    atol: dict[str, float] | None = None,
) -> None:
    """Run the same computation (fed the same host inputs by `run`) on two backends and compare
    each output on its own: same number of outputs, dtype, shape, then values within the
    tolerance: `rtol` (one for all, or one per output as `measured_tolerances` gives), else the
    per-dtype default (that of the less precise dtype when `check_dtype` is off).

    `run(backend)` returns an array or a tuple/list/dict of arrays on that backend. Return every
    parameter and gradient as its own output: in one flat vector, the largest layer sets the
    scale of the relative error and a wrong small layer hides below it.

    `run` must leave its host inputs as they were: it runs twice on `first`, which must give the
    same bits, before it runs on `second`.

    `atol` {output: bound}: outputs whose exact value is 0 (the gradient of a bias right before a
    batch norm, which subtracts it again) are rounding noise on both backends, and the relative
    error of two noises means nothing; they pass when max |a - b| is within their bound instead.
    """
    a = _to_host(run(first), first)
    again = _to_host(run(first), first)
    for key in a:  # NaN == NaN here: the same bits twice
        assert np.array_equal(a[key], again[key], equal_nan=True), (
            f"output {key}: two runs on {first.name} differ: does run() change its host inputs in place? "
            "(the CPU's backend.asarray returns a host array of the right dtype itself, without a copy)"
        )
    b = _to_host(run(second), second)
    assert a.keys() == b.keys(), f"outputs differ: {sorted(a)} vs {sorted(b)}"
    for key in a:
        x, y = a[key], b[key]
        if check_dtype:
            assert x.dtype == y.dtype, f"output {key}: dtype {x.dtype} on {first.name} vs {y.dtype} on {second.name}"
        assert x.shape == y.shape, f"output {key}: shape {x.shape} on {first.name} vs {y.shape} on {second.name}"
        if x.dtype.kind in "biu":
            assert np.array_equal(x, y), f"output {key}: integer values differ"
            continue
        coarser = x.dtype if x.dtype.itemsize <= y.dtype.itemsize else y.dtype
        if isinstance(rtol, dict):
            tol = rtol[key]
        else:
            tol = rtol if rtol is not None else PARITY_RTOL[np.dtype(coarser)]
        nan_x, nan_y = np.isnan(x), np.isnan(y)
        assert np.array_equal(nan_x, nan_y), f"output {key}: NaN in different places ({first.name} vs {second.name})"
        x, y = np.where(nan_x, 0, x), np.where(nan_y, 0, y)
        if atol and key in atol:
            diff = float(np.abs(x.astype(np.float64) - y).max(initial=0.0))
            assert diff <= atol[key], f"output {key}: |a - b| {diff:.3g} > {atol[key]:.1g} (exactly 0 in exact math)"
            continue
        err = relative_error(x, y)
        assert err <= tol, f"output {key}: relative error {err:.3g} > {tol:.1g} ({first.name} vs {second.name})"


def _to_host(out: Any, backend: Backend) -> dict[str, np.ndarray]:
    if isinstance(out, dict):
        items = out.items()
    elif isinstance(out, (tuple, list)):
        items = enumerate(out)
    else:
        items = [(0, out)]
    # copies: on the CPU an output may be an input array that a later run changes in place
    return {str(k): np.array(backend.to_numpy(backend.xp.asarray(v))) for k, v in items}
