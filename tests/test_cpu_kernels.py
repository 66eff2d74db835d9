"""The CPU's compiled loops (nnx/cpu_kernels.py, through nnx/cpu_ops.py) at their edges: NaN and
infinities, ties, bad labels and indices, arrays they must leave to the NumPy chains. Their
agreement with the reference on ordinary numbers is in tests/test_cpu_ops.py."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import nnx.cpu_ops as cpu_ops
from nnx.backend import Backend
from nnx.cpu_ops import CpuOps
from nnx.nn import build_model, mlp_spec
from nnx.ops import Ops

REF = Ops(np)


@pytest.fixture
def ops() -> CpuOps:
    if cpu_ops.compiled_kernels() is None:
        pytest.skip("Numba is not installed (a dependency of nnx; the GPU check does not carry it)")
    return CpuOps()


def test_the_accuracy_count_is_numpys_argmax_with_ties_and_nan(ops: CpuOps) -> None:
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        z = rng.integers(0, 3, size=(300, 10)).astype(dtype)  # many ties: the first maximum counts
        z[5, 7] = np.nan  # a NaN is the maximum, and the first NaN wins
        z[6, [2, 8]] = np.nan
        z[7, 0], z[8, 9] = np.inf, -np.inf
        for y in (rng.integers(0, 10, size=300), z.argmax(axis=1), np.full(300, 7)):
            assert ops.count_correct(z, y) == REF.count_correct(z, y)
        assert ops.count_correct(z, z.argmax(axis=1)) == 300
        assert ops.count_correct(z[:0], y[:0]) == 0


def test_nan_and_infinite_logits_give_the_references_nan_loss(ops: CpuOps) -> None:
    z = np.random.default_rng(1).normal(size=(6, 10)).astype(np.float32)
    z[1, 3], z[2, 0], z[3, 9] = np.nan, np.inf, -np.inf
    y = np.array([0, 1, 2, 3, 4, 9])
    with np.errstate(invalid="ignore"):
        loss, dz = ops.softmax_cross_entropy(z, y)
        expected_loss, expected_dz = REF.softmax_cross_entropy(z, y)
    assert np.isnan(loss) and np.isnan(expected_loss)
    assert np.array_equal(np.isnan(dz), np.isnan(expected_dz))
    finite = ~np.isnan(expected_dz)
    np.testing.assert_allclose(dz[finite], expected_dz[finite], rtol=1e-6, atol=1e-7)
    assert type(loss) is np.float32


def test_a_batch_index_out_of_range_is_an_index_error_not_a_read_past_the_images(ops: CpuOps) -> None:
    images = np.arange(5 * 6, dtype=np.uint8).reshape(5, 6)
    for bad in (5, -1, 1 << 40):
        with pytest.raises(IndexError, match=f"index {bad} is out of bounds for axis 0 with size 5"):
            ops.normalize_rows(images, np.array([0, 4, bad]), 0.5, 0.0, np.float32)
    # slices, images of more axes and other integer types of index take the same loop
    x = np.arange(4 * 2 * 3, dtype=np.uint8).reshape(4, 2, 3)
    expected = REF.normalize(x[1:3], 1 / 3, 0.25, np.float64)
    assert np.array_equal(ops.normalize_rows(x, slice(1, 3), 1 / 3, 0.25, np.float64), expected)
    assert np.array_equal(ops.normalize_rows(x, np.array([1, 2], dtype=np.int32), 1 / 3, 0.25, np.float64), expected)
    assert np.array_equal(ops.normalize(x[1:3], 1 / 3, 0.25, np.float64), expected)


def test_arrays_the_loops_do_not_take_go_the_references_way(ops: CpuOps) -> None:
    """Strided views, mixed dtypes and integer arrays: the reference's results, not a crash or a
    silent copy written somewhere else."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=(8, 12)).astype(np.float32)
    b = rng.normal(size=6).astype(np.float32)
    view = a[:, ::2]  # not contiguous: bias_relu must write through the view
    expected = REF.bias_relu(view.copy(), b)
    assert ops.bias_relu(view, b) is view and np.array_equal(view, expected)
    expected = REF.add_bias(view.copy(), b)
    assert ops.add_bias(view, b) is view and np.array_equal(view, expected)
    b64 = b.astype(np.float64)  # float32 and float64: the reference's in-place add, rounded to float32
    out = ops.add_bias(a[:, 1:7].copy(), b64)
    assert out.dtype == np.float32 and np.array_equal(out, REF.add_bias(a[:, 1:7].copy(), b64))
    dy, y = rng.normal(size=(8, 6)), rng.normal(size=(8, 6)).astype(np.float32)  # float64 and float32
    assert np.array_equal(ops.relu_backward(dy, y), REF.relu_backward(dy, y))
    assert np.array_equal(ops.relu_backward(dy[:, ::2], dy[:, ::2]), REF.relu_backward(dy[:, ::2], dy[:, ::2]))
    p, g, v = (rng.normal(size=40).astype(np.float32) for _ in range(3))
    states = [(p[::2].copy(), v[::2].copy()), (p.copy(), v.copy())]
    REF.sgd_update(states[0][0], g[::2], states[0][1], 0.1, 0.9, True, 0.0)
    ops.sgd_update(states[1][0][::2], g[::2], states[1][1][::2], 0.1, 0.9, True, 0.0)  # strided
    assert np.array_equal(states[1][0][::2], states[0][0]) and np.array_equal(states[1][1][::2], states[0][1])
    assert np.array_equal(states[1][0][1::2], p[1::2])  # the other elements untouched


def test_nnx_numba_0_turns_the_loops_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_ops, "_kernels", False)
    monkeypatch.setenv("NNX_NUMBA", "0")
    assert CpuOps().kernels is None
    monkeypatch.setattr(cpu_ops, "_kernels", False)
    monkeypatch.delenv("NNX_NUMBA")
    assert (CpuOps().kernels is not None) == (importlib.util.find_spec("numba") is not None)


def test_building_a_network_compiles_the_loops_for_its_dtype_before_any_step(
    ops: CpuOps, monkeypatch: pytest.MonkeyPatch
) -> None:
    warmed: list[np.dtype] = []
    monkeypatch.setattr(ops.kernels, "warm", lambda dtype: warmed.append(np.dtype(dtype)))
    build_model(mlp_spec([4, 3, 2]), Backend("cpu", np, np.dtype(np.float64), ops=ops), np.random.default_rng(0))
    assert warmed == [np.dtype(np.float64)]


def test_a_loop_numba_cannot_compile_leaves_the_numpy_chains_with_a_warning(
    ops: CpuOps, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(dtype: object) -> None:
        raise RuntimeError("LLVM ERROR: no such target")

    monkeypatch.setattr(ops.kernels, "warm", broken)
    backend = Backend("cpu", np, np.dtype(np.float32), ops=ops)
    with pytest.warns(UserWarning, match="Numba could not compile nnx's CPU kernels .*no such target.*using NumPy's"):
        build_model(mlp_spec([4, 3, 2]), backend, np.random.default_rng(0))
    assert ops.kernels is None
    z, y = np.ones((2, 3), dtype=np.float32), np.array([0, 2])
    assert ops.count_correct(z, y) == 1  # the reference's argmax: row 0's first maximum


def test_a_loss_sum_past_the_dtypes_range_is_inf_as_in_the_reference(ops: CpuOps) -> None:
    """Rows of loss 1e37 (a run at a learning rate of 1e9): 128 of them add up past float32's
    range in the reference's sum, whose inf the divergence guard catches; a finite mean of 1e37
    would have let the run go on."""
    z = np.zeros((128, 10), dtype=np.float32)
    z[:, 0] = 1e37  # label 1: loss = 1e37 - 0 + log(1 + 9 e^-1e37) = 1e37 a row
    y = np.ones(128, dtype=np.int64)
    with np.errstate(over="ignore"):
        expected, _ = REF.softmax_cross_entropy(z, y)
    loss, dz = ops.softmax_cross_entropy(z, y)
    assert np.isinf(expected) and np.isinf(loss) and loss > 0
    assert np.isfinite(dz).all()
    loss, _ = ops.softmax_cross_entropy(z[:10], y[:10])  # 1e38: still in range
    assert loss == pytest.approx(1e37, rel=1e-6)
    loss, _ = ops.softmax_cross_entropy(z.astype(np.float64), y)  # float64's range is wider
    assert loss == pytest.approx(float(np.float32(1e37)), rel=1e-12)


def test_numba_that_cannot_set_up_its_cache_leaves_the_numpy_chains_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Numba raises RuntimeError at import when no folder takes its cache (a read-only install
    and a read-only home): training goes on with NumPy's chains, and says so once."""
    import importlib

    def no_cache(name: str) -> object:
        raise RuntimeError("cannot cache function 'sgd': no locator available for file 'cpu_kernels.py'")

    monkeypatch.setattr(cpu_ops, "_kernels", False)
    monkeypatch.setattr(importlib, "import_module", no_cache)
    with pytest.warns(UserWarning, match="Numba could not set up nnx's CPU kernels .*no locator.*using NumPy's"):
        assert CpuOps().kernels is None
    assert CpuOps().kernels is None  # looked for once
