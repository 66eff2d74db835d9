"""Checks that prove the math: numerical gradients and backend parity.

Used by nnx's own tests; public so that anyone adding a layer can check it the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from nnx.backend import Backend

# Per-dtype tolerances for comparing two backends (relative error).
PARITY_RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}


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


def assert_parity(
    run: Callable[[Backend], Any],
    first: Backend,
    second: Backend,
    rtol: float | None = None,
    check_dtype: bool = True,
) -> None:
    """Run the same computation (fed the same host inputs by `run`) on two backends and compare:
    same number of outputs, dtype, shape, then values within the per-dtype tolerance (that of the
    less precise dtype when `check_dtype` is off, e.g. float64 against float32 on one device).

    `run(backend)` returns an array or a tuple/list/dict of arrays on that backend.
    """
    a = _to_host(run(first), first)
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
        tol = rtol if rtol is not None else PARITY_RTOL[np.dtype(coarser)]
        err = relative_error(x, y)
        assert err <= tol, f"output {key}: relative error {err:.3g} > {tol:.1g} ({first.name} vs {second.name})"


def _to_host(out: Any, backend: Backend) -> dict[str, np.ndarray]:
    if isinstance(out, dict):
        items = out.items()
    elif isinstance(out, (tuple, list)):
        items = enumerate(out)
    else:
        items = [(0, out)]
    return {str(k): backend.to_numpy(backend.xp.asarray(v)) for k, v in items}
