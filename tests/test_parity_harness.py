"""The CPU/GPU parity harness (nnx.testing) checked without a GPU: per-output comparison, tolerances
measured from float32 rounding, NaN placement. The GPU tests rely on all three."""

from __future__ import annotations

import numpy as np
import pytest

from nnx.backend import get_backend
from nnx.nn import SoftmaxCrossEntropy, build_model, mlp_spec
from nnx.preprocess import Preprocess
from nnx.testing import FLOAT32_FLOOR, SUMMATION_ORDER_FACTOR, assert_parity, measured_tolerances, relative_error

CPU32, CPU64 = get_backend("cpu", "float32"), get_backend("cpu", "float64")
HOST = np.random.default_rng(0)
X = HOST.integers(0, 256, size=(64, 784), dtype=np.uint8)
LABELS = HOST.integers(0, 10, size=64)


def network_outputs(backend, wrong_small_layer: bool = False) -> dict:
    """Every parameter and gradient of a 784-256-4-10 network after one backward pass; optionally
    with the 4-unit layer's bias gradient off by 2e-5 (a bug in a small layer)."""
    model = build_model(mlp_spec([784, 256, 4, 10]), backend, np.random.default_rng(1))
    z = model.logits(Preprocess.named("standard")(backend.asarray(X), backend), training=True)
    loss_fn = SoftmaxCrossEntropy(backend)
    loss_fn.forward(z, backend.asarray(LABELS, dtype=np.int64))
    model.backward(loss_fn.backward())
    out = {}
    for name, p, g in model.parameters():
        out[f"param/{name}"], out[f"grad/{name}"] = p, g.copy()
    if wrong_small_layer:
        small_bias = [key for key, value in out.items() if key.startswith("grad/") and value.shape == (4,)]
        out[small_bias[0]] += 2e-5
    return out


def test_measured_tolerances_follow_the_float32_rounding_of_each_output() -> None:
    tolerances = measured_tolerances(network_outputs, CPU32, CPU64)
    low, exact = network_outputs(CPU32), network_outputs(CPU64)
    assert tolerances.keys() == low.keys()
    for key, tol in tolerances.items():
        measured = relative_error(low[key], exact[key])
        assert tol == max(SUMMATION_ORDER_FACTOR * measured, FLOAT32_FLOOR)
    # gradients summed over a batch carry more rounding than the parameters copied from the host
    assert max(tolerances[k] for k in tolerances if k.startswith("grad/")) > FLOAT32_FLOOR
    assert all(tolerances[k] == FLOAT32_FLOOR for k in tolerances if k.startswith("param/"))
    # and every one is far below what a real bug costs
    assert max(tolerances.values()) < 1e-4


def test_a_float32_run_passes_against_float64_with_measured_tolerances() -> None:
    tolerances = measured_tolerances(network_outputs, CPU32, CPU64)
    assert_parity(network_outputs, CPU64, CPU32, rtol=tolerances, check_dtype=False)


def test_a_wrong_small_layer_is_caught_per_output_but_hides_in_a_flat_vector() -> None:
    tolerances = measured_tolerances(network_outputs, CPU32, CPU64)
    calls = []

    def buggy_second(backend):
        calls.append(backend)
        return network_outputs(backend, wrong_small_layer=len(calls) == 3)  # first, first again, second

    with pytest.raises(AssertionError, match=r"output grad/.*relative error"):
        assert_parity(buggy_second, CPU32, CPU32, rtol=tolerances)
    good, bad = network_outputs(CPU32), network_outputs(CPU32, wrong_small_layer=True)
    flat_good = np.concatenate([v.ravel() for v in good.values()])
    flat_bad = np.concatenate([v.ravel() for v in bad.values()])
    assert relative_error(flat_good, flat_bad) < 1e-5  # one flat vector: the error drowns in the scale


def test_nan_must_sit_in_the_same_places() -> None:
    def run(backend):
        calls.append(backend)
        a = backend.xp.ones(4, dtype=backend.dtype)
        a[1 if len(calls) <= 2 else 2] = np.nan  # first, first again, then second
        return a

    calls: list = []
    with pytest.raises(AssertionError, match="NaN in different places"):
        assert_parity(run, CPU32, CPU32)
    calls.clear()

    def same(backend):
        a = backend.xp.ones(4, dtype=backend.dtype)
        a[1] = np.nan
        return a

    assert_parity(same, CPU32, CPU32)


def test_a_run_that_changes_its_host_inputs_is_caught() -> None:
    """On the CPU, backend.asarray of a float64 array in float64 is that array: a run updating it
    in place hands the next backend other inputs, and the comparison would blame the device."""
    p0 = np.ones(8)

    def run(backend):
        p = backend.asarray(p0)
        p *= 0.5  # an optimizer step, in place
        return p

    with pytest.raises(AssertionError, match="two runs on cpu differ: does run\\(\\) change its host inputs"):
        assert_parity(run, CPU64, CPU32, check_dtype=False)
    p0[...] = 1

    def run_on_a_copy(backend):
        p = backend.asarray(p0).copy()
        p *= 0.5
        return p

    assert_parity(run_on_a_copy, CPU64, CPU32, check_dtype=False)
