"""The CPU's ops (nnx/cpu_ops.py): the same numbers as the plain reference in nnx/ops.py, whatever
the chunking, and the same bits whatever the number of threads."""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import nnx.cpu_ops as cpu_ops
from nnx.backend import Backend, get_backend
from nnx.cpu_ops import CpuOps
from nnx.nn import SoftmaxCrossEntropy, build_model
from nnx.ops import Ops
from nnx.optim import SGD, Adam, RMSprop


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of a few rows, so that test-sized arrays are cut into many pieces."""
    monkeypatch.setattr(cpu_ops, "CHUNK_ELEMENTS", 64)
    monkeypatch.setattr(cpu_ops, "SERIAL_ELEMENTS", 0)
    monkeypatch.setattr(cpu_ops, "MIN_OUTPUT_ROWS", 4)


@pytest.fixture(params=[True, False], ids=["compiled", "numpy"])
def compiled(request: pytest.FixtureRequest) -> bool:
    """The CPU's ops with nnx/cpu_kernels.py's loops (Numba), or with the NumPy chains they replace
    (what runs where Numba is missing)."""
    if request.param and cpu_ops.compiled_kernels() is None:
        pytest.skip("Numba is not installed (a dependency of nnx; the GPU check does not carry it)")
    return request.param


def backend_with(ops: Ops, dtype: type = np.float64) -> Backend:
    return Backend("cpu", np, np.dtype(dtype), ops=ops)


CNN = [
    {"type": "reshape", "shape": [1, 28, 28]},
    {"type": "conv2d", "out": 4, "kernel": 3, "padding": 1},
    {"type": "relu"},
    {"type": "maxpool2d", "size": 2},
    {"type": "conv2d", "out": 6, "kernel": 3, "stride": 2, "padding": 1},
    {"type": "relu"},
    {"type": "maxpool2d", "size": 2, "stride": 1},
    {"type": "flatten"},
    {"type": "dropout", "p": 0.3},
    {"type": "linear", "out": 40},
    {"type": "relu"},
    {"type": "linear", "out": 10},
]


def train_steps(ops: Ops, dtype: type, optimizer: type, steps: int = 3) -> dict[str, np.ndarray]:
    """A few training steps of a CNN with every chunked layer; parameters, gradients, optimizer state."""
    backend = backend_with(ops, dtype)
    model = build_model(CNN, backend, np.random.default_rng(3))
    opt = optimizer(model.flat_parameters(), 0.01, ops=ops)
    loss_fn = SoftmaxCrossEntropy(backend)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(37, 784)).astype(dtype)
    y = rng.integers(0, 10, size=37)
    for step in range(steps):
        model.set_random_key(0, 1, step)
        loss_fn.forward(model.logits(x, training=True), y)
        model.backward(loss_fn.backward())
        opt.step()
    out = {f"param {k}": p.copy() for k, p, _ in model.parameters()}
    out |= {f"grad {k}": g.copy() for k, _, g in model.parameters()}
    out |= {k: v for k, v in opt.state_arrays(np.asarray).items()}
    return out


@pytest.fixture(params=["im2col", "winograd"])
def conv_algorithm(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CNN's 3x3 stride-1 convolutions by im2col, or all of them by Winograd's F(2x2, 3x3)."""
    if request.param == "winograd":
        monkeypatch.setattr(cpu_ops, "WINOGRAD_MIN_CHANNEL_RATIO", 0)
        monkeypatch.setattr(cpu_ops.CpuOps, "winograd", True)


@pytest.mark.parametrize("optimizer", [SGD, Adam, RMSprop])
def test_chunked_training_matches_the_reference(small_chunks, conv_algorithm, optimizer, compiled) -> None:
    """Every layer and optimizer cut into many chunks on 3 threads gives the reference's numbers
    (float64: only the order of the batch sums differs, Winograd's rounding and libm's exp)."""
    reference = train_steps(Ops(np), np.float64, optimizer)
    chunked = train_steps(CpuOps(threads=3, own_threads=True, compiled=compiled), np.float64, optimizer)
    for key, expected in reference.items():
        np.testing.assert_allclose(chunked[key], expected, rtol=1e-11, atol=1e-13, err_msg=key)


def test_the_thread_count_does_not_change_a_bit(small_chunks, conv_algorithm, compiled) -> None:
    one = train_steps(CpuOps(threads=1, own_threads=True, compiled=compiled), np.float32, Adam)
    three = train_steps(CpuOps(threads=3, own_threads=True, compiled=compiled), np.float32, Adam)
    for key, expected in one.items():
        assert np.array_equal(three[key], expected), key


def test_elementwise_chains_are_the_reference_bit_for_bit(small_chunks, monkeypatch, compiled) -> None:
    ops, ref = CpuOps(threads=2, own_threads=True, compiled=compiled), Ops(np)
    rng = np.random.default_rng(0)
    dy = rng.normal(size=(9, 5, 4)).astype(np.float32)
    y = np.maximum(rng.normal(size=(9, 5, 4)), 0).astype(np.float32)
    dy[0, 0, 0], y[1, 0, 0] = np.nan, np.nan
    assert np.array_equal(ops.relu_backward(dy, y), ref.relu_backward(dy, y), equal_nan=True)
    a = rng.normal(size=(9, 20)).astype(np.float32)
    a[0, :4] = [np.nan, np.inf, -np.inf, -0.0]
    b = rng.normal(size=20).astype(np.float32)
    for shape in [(9, 20), (3, 3, 20)]:
        out = ops.bias_relu(a.reshape(shape).copy(), b)
        assert np.array_equal(out, ref.bias_relu(a.reshape(shape).copy(), b), equal_nan=True)
        assert out.shape == shape and np.isnan(out.flat[0]) and out.flat[1] == np.inf and out.flat[2] == 0
    out = ops.add_bias(a.copy(), b)
    assert np.array_equal(out, ref.add_bias(a.copy(), b), equal_nan=True) and out.flat[3] == b[3] and out.flat[4] < 0
    u = ops.uniform((7, 11), key=123, dtype=np.float32, offset=5)
    assert np.array_equal(u, ref.uniform((7, 11), key=123, dtype=np.float32, offset=5))
    p, g, m, v = (rng.normal(size=301).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    updates = [("adam_update", "mv", (0.01, 0.9, 0.999, 1e-8, 3, wd, dec)) for wd in (0.0, 0.01) for dec in (0, 1)]
    updates += [("adam_update", "mv", (0.01, 0.9, 0.999, 1e-8, 1, 0.0, 0))]  # step 1: the largest bias corrections
    updates += [("rmsprop_update", "v", (0.01, 0.9, 1e-8, wd)) for wd in (0.0, 0.01)]
    updates += [("sgd_update", "m", (0.01, 0.9, nesterov, wd)) for wd in (0.0, 0.01) for nesterov in (0, 1)]
    updates += [("sgd_update", "-", (0.01, 0.0, False, wd)) for wd in (0.0, 0.01)]  # no velocity buffer
    for name, buffers, args in updates:
        states = [{"p": p.copy(), "m": m.copy(), "v": v.copy(), "-": None} for _ in range(2)]
        for o, state in zip((ops, ref), states, strict=True):
            for _ in range(2):  # the second time with the scratch arrays of the first
                getattr(o, name)(state["p"], g, *(state[b] for b in buffers), *args)
        for key in "pmv":
            assert not np.isnan(states[1][key]).any()
            assert np.array_equal(states[0][key], states[1][key]), (name, args, key)
    images = rng.integers(0, 256, size=(40, 6), dtype=np.uint8)
    idx = rng.permutation(40)[:23]
    for shift, own_threads in [(0.0, False), (0.42, False), (0.0, True), (0.42, True)]:
        # in one piece, or cut into chunks
        monkeypatch.setattr(ops, "own_threads", own_threads)
        expected = ref.normalize(images[idx], 1 / 77.0, shift, np.float32)
        assert np.array_equal(ops.normalize_rows(images, idx, 1 / 77.0, shift, np.float32), expected)
        assert np.array_equal(ops.normalize(images[idx], 1 / 77.0, shift, np.float32), expected)


@pytest.mark.parametrize("slots", [1, 2, 4, 9])
def test_the_first_maximum_of_each_window_is_the_references(slots: int) -> None:
    """The slot each pooling window hands its gradient to: the first maximum among ties (small
    integers tie often), slot 0 for a window with a NaN, as the reference's argmin says."""
    rng = np.random.default_rng(slots)
    packed = rng.integers(0, 3, size=(slots, 5, 3, 3, 4)).astype(np.float32)
    packed[rng.integers(0, slots), 1, 2] = np.nan
    y = packed.max(axis=0)
    got = CpuOps().first_max_slot(packed, y, out=np.full(y.shape, 77, dtype=np.uint8))
    expected = Ops(np).first_max_slot(packed, y, out=np.empty(y.shape, dtype=np.uint8))
    assert np.array_equal(got, expected)
    assert (got[1, 2] == 0).all() and got.max() == (slots - 1 if slots > 1 else 0)
    valid = ~np.isnan(y)
    first = np.take_along_axis(packed, got[None].astype(np.int64), axis=0)[0]
    assert np.array_equal(first[valid], y[valid])  # a maximum, and no earlier one
    assert all(((packed[p] < y) | (got <= p))[valid].all() for p in range(slots))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_loss_is_the_reference(dtype, compiled) -> None:
    """The same loss and gradient (to the rounding of a 10-term sum and of exp), by the compiled
    loop or on transposed logits; labels outside 0..C-1 give the reference's NaN rows, and an
    empty batch its zero loss."""
    rng = np.random.default_rng(2)
    ops, ref = CpuOps(compiled=compiled), Ops(np)
    z = (rng.normal(size=(70, 10)) * 30).astype(dtype)
    y = rng.integers(0, 10, size=70)
    loss, dz = ops.softmax_cross_entropy(z, y)
    expected_loss, expected_dz = ref.softmax_cross_entropy(z, y)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    assert dz.dtype == dtype and dz.flags.c_contiguous
    np.testing.assert_allclose(loss, expected_loss, rtol=tol)
    np.testing.assert_allclose(dz, expected_dz, rtol=tol, atol=tol / 70)
    y[[3, 9]] = [-1, 10]
    loss, dz = ops.softmax_cross_entropy(z, y)
    expected_loss, expected_dz = ref.softmax_cross_entropy(z, y)
    assert np.isnan(loss) and np.array_equal(np.isnan(dz), np.isnan(expected_dz))
    assert np.isnan(dz[[3, 9]]).all() and not np.isnan(dz[[0, 4]]).any()
    loss, dz = ops.softmax_cross_entropy(z[:0], y[:0])
    assert loss == 0 and dz.shape == (0, 10)


def test_chunks_cover_every_row_once_and_depend_on_sizes_only() -> None:
    for n, cost, shared in [
        (1, 10**9, 0),
        (5, 1, 0),
        (1000, 3000, 0),
        (129, 70000, 10**6),
        (64, 4000, 50000),
        (128, 37632, 0),
    ]:
        chunks = CpuOps(threads=1, own_threads=True).chunks(n, cost, shared)
        assert chunks == CpuOps(threads=8, own_threads=True).chunks(n, cost, shared)
        covered = np.concatenate([np.arange(n)[c] for c in chunks])
        assert np.array_equal(covered, np.arange(n))
        lengths = {c.stop - c.start for c in chunks}  # nearly equal: the threads end together
        assert max(lengths) - min(lengths) <= 1
        assert len(chunks) in (1, n) or len(chunks) % 2 == 0  # and two threads get as many
    # a weight matrix every chunk reads makes chunks long enough to pay for reading it
    assert len(CpuOps().chunks(1024, 67_000, shared=1 << 20)) <= 10
    # work one chunk would hold goes in two halves, one per core, when each half is big enough
    # (mnist_fast's first convolution at batch 64) and a weight read by both does not outweigh it
    ops = CpuOps(own_threads=True)
    assert ops.chunks(64, 16464) == [slice(0, 32), slice(32, 64)]
    assert ops.chunks(128, 3136) == [slice(0, 128)]  # halves of 200K elements: one piece
    assert ops.chunks(64, 14240, shared=200704) == [slice(0, 64)]
    assert ops.chunks(1, 10**7) == [slice(0, 1)]


def test_parallel_sum_adds_in_chunk_order(small_chunks) -> None:
    x = np.random.default_rng(1).normal(size=(50, 3)).astype(np.float32)
    ops = CpuOps(threads=3, own_threads=True)
    expected = np.zeros(3, dtype=np.float32)
    for rows in ops.chunks(50, 3, 0):
        expected += x[rows].sum(axis=0)
    assert np.array_equal(ops.parallel_sum(50, lambda r: x[r].sum(axis=0), 3), expected)


@pytest.mark.parametrize("own_threads", [False, True])
def test_sums_over_rows_are_the_reference_to_rounding(small_chunks, own_threads: bool) -> None:
    """db as the product 1^T dy: the reference's sums to float32 rounding, into `out` or a new
    array, NaN and infinities carried as a sum carries them, and an empty batch's zeros."""
    ops, ref = CpuOps(threads=2, own_threads=own_threads), Ops(np)
    x = np.random.default_rng(5).normal(size=(301, 7)).astype(np.float32)
    out = np.full(7, 99.0, dtype=np.float32)
    assert ops.sum_rows(x, out=out) is out
    np.testing.assert_allclose(out, ref.sum_rows(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ops.sum_rows(x.astype(np.float64)), ref.sum_rows(x.astype(np.float64)), rtol=1e-12)
    x[3, 1], x[5, 2], x[6, 3], x[7, 3] = np.nan, np.inf, np.inf, -np.inf
    with np.errstate(invalid="ignore"):  # inf - inf, as in the reference
        assert np.array_equal(np.isnan(ops.sum_rows(x)), np.isnan(ref.sum_rows(x)))
        assert ops.sum_rows(x)[2] == np.inf
    assert np.array_equal(ops.sum_rows(x[:0]), np.zeros(7, dtype=np.float32))


@pytest.mark.parametrize("own_threads", [False, True])
def test_row_products_cover_every_row_in_chunks_or_in_one(small_chunks, own_threads: bool) -> None:
    """y = x W and dx = dy W^T (a transposed view): every row, in chunks on own threads or in one
    product, to float rounding; the result's dtype the operands'."""
    ops = CpuOps(threads=3, own_threads=own_threads)
    rng = np.random.default_rng(6)
    x, W = rng.normal(size=(53, 17)).astype(np.float32), rng.normal(size=(17, 9)).astype(np.float32)
    if own_threads:
        assert len(ops.chunks(len(x), 17 + 9 + 17 * 9 // 16, W.size)) > 1  # the test cuts it
    y = ops.matmul(x, W, 17 + 9 + 17 * 9 // 16, shared=W.size)
    assert y.dtype == np.float32 and y.shape == (53, 9)
    np.testing.assert_allclose(y, x.astype(np.float64) @ W, rtol=1e-5, atol=1e-5)
    dx = ops.matmul(y, W.T, 17 + 9 + 17 * 9 // 16, shared=W.size)
    np.testing.assert_allclose(dx, y.astype(np.float64) @ W.T, rtol=1e-5, atol=1e-4)
    assert ops.matmul(x[:0], W, 1).shape == (0, 9)


def test_an_error_in_a_chunk_reaches_the_caller_after_every_chunk_ended(small_chunks) -> None:
    done: list[int] = []
    lock = threading.Lock()

    ops = CpuOps(threads=3, own_threads=True)
    starts = [c.start for c in ops.chunks(40, 8, 0)]
    failing = starts[1]

    def work(rows: slice) -> None:
        if rows.start == failing:
            raise ValueError(f"chunk at {failing} failed")
        with lock:
            done.append(rows.start)

    with pytest.raises(ValueError, match=f"chunk at {failing}"):
        ops.parallel_for(40, work, 8)
    # the pool is usable again afterwards
    ops.parallel_for(40, lambda rows: None, 8)
    assert set(done) <= set(starts) - {failing}


def test_nested_parallel_sections_run_inline(small_chunks) -> None:
    ops = CpuOps(threads=2, own_threads=True)
    out = np.zeros((12, 12))

    def outer(rows: slice) -> None:
        def inner(cols: slice) -> None:
            out[rows, cols] += 1

        ops.parallel_for(12, inner, 8)

    ops.parallel_for(12, outer, 8)
    assert (out == 1).all()


def blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool.get("user_api") == "blas"]


def test_blas_is_held_at_one_thread_only_while_chunks_run(small_chunks) -> None:
    before = blas_threads()
    seen: list[list[int]] = []
    ops = CpuOps(threads=2, own_threads=True)
    ops.parallel_for(8, lambda rows: seen.append(blas_threads()), 64)
    assert seen and all(set(s) == {1} for s in seen)
    assert blas_threads() == before


def test_a_network_with_convolutions_spreads_its_work_on_own_threads_others_leave_it_to_blas() -> None:
    """BLAS's idle threads spin for a while after a threaded call and would take the cores from
    the chunks: with own threads, all work runs with BLAS on one thread (chunks and pieces too
    small to cut alike); without (an MLP), nothing is cut and BLAS keeps its threads. Chosen from
    the layers before the first step, so that a run's numbers never depend on timing."""
    before = blas_threads()
    mlp = get_backend("cpu", "float32")
    build_model([{"type": "linear", "in": 784, "out": 10}], mlp, np.random.default_rng(0))
    cnn = get_backend("cpu", "float32")
    build_model(CNN, cnn, np.random.default_rng(0))
    assert not mlp.ops.own_threads and cnn.ops.own_threads
    seen: dict[str, list[tuple[slice, list[int]]]] = {"mlp": [], "cnn": []}
    for name, backend in [("mlp", mlp), ("cnn", cnn)]:
        for n in (1, 2):  # one piece; two chunks for the CNN's ops
            backend.ops.parallel_for(n, lambda rows, name=name: seen[name].append((rows, blas_threads())), 1 << 20)
    assert seen["mlp"] == [(slice(0, 1), before), (slice(0, 2), before)]
    assert sorted((rows.start, rows.stop, threads) for rows, threads in seen["cnn"]) == [
        (0, 1, [1] * len(before)),
        (0, 1, [1] * len(before)),
        (1, 2, [1] * len(before)),
    ]
    assert blas_threads() == before


def test_the_cpu_backend_uses_them_and_the_plain_one_is_the_reference() -> None:
    assert isinstance(get_backend("cpu").ops, CpuOps)
    assert type(get_backend("cpu", fused=False).ops) is Ops


def test_relu_before_maxpool_leaves_its_mask_to_the_pool() -> None:
    """Folding the ReLU's gradient mask into the pool changes no gradient."""
    backend = get_backend("cpu", "float64")
    model = build_model(CNN, backend, np.random.default_rng(5))
    relu, pool = model.layers[2], model.layers[3]
    assert relu.mask_applied_by_next and pool.relu_before
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5, 784))
    loss_fn = SoftmaxCrossEntropy(backend)
    model.set_random_key(0, 1, 0)
    loss_fn.forward(model.logits(x, training=True), rng.integers(0, 10, size=5))
    model.backward(loss_fn.backward())
    fused = {k: g.copy() for k, _, g in model.parameters()}
    relu.mask_applied_by_next = pool.relu_before = False
    model.backward(loss_fn.backward())
    for k, _, g in model.parameters():
        assert np.array_equal(g, fused[k]), k


def test_ops_made_while_chunks_run_still_count_every_thread(small_chunks) -> None:
    """BLAS reads one thread while a section runs; ops made meanwhile (a sweep worker's, in
    another thread) must not take that for the machine's size."""
    outside = CpuOps().threads
    made: list[int] = []
    CpuOps(threads=2, own_threads=True).parallel_for(4, lambda rows: made.append(CpuOps().threads), 64)
    assert made and set(made) == {outside}


@pytest.mark.parametrize("out", [4, 16])
def test_a_convolution_keeps_narrow_columns_and_builds_wide_ones_again(small_chunks, out: int) -> None:
    """Columns wider than the output (9 > 4 here), built in chunks, are built again in backward a
    few images at a time; narrower ones (9 <= 16) are kept, as are all columns of a batch done in
    one piece; evaluation keeps none. The gradients are the reference's."""
    spec = [dict(CNN[1], out=out), *CNN[2:]]
    grads = {}
    for name, ops in [("one piece", Ops(np)), ("chunks", CpuOps(threads=2, own_threads=True))]:
        backend = backend_with(ops)
        model = build_model(spec, backend, np.random.default_rng(3))
        conv = model.layers[1]
        x = np.random.default_rng(4).normal(size=(9, 784))
        model.logits(x, training=False)
        assert conv.cols is None
        model.set_random_key(0, 1, 0)
        loss_fn = SoftmaxCrossEntropy(backend)
        loss_fn.forward(model.logits(x, training=True), np.arange(9))
        assert (conv.cols is not None) == (name == "one piece" or out >= 9)
        model.backward(loss_fn.backward())
        grads[name] = {k: g.copy() for k, _, g in model.parameters()}
    for key, expected in grads["one piece"].items():
        np.testing.assert_allclose(grads["chunks"][key], expected, rtol=1e-11, atol=1e-13, err_msg=key)


def test_malloc_keeps_freed_memory_for_a_cnn_unless_the_user_chose(monkeypatch) -> None:
    """A CNN on the CPU asks glibc's malloc to reuse freed memory (once per process), unless the
    user set its thresholds through the environment."""
    import platform

    monkeypatch.setattr(cpu_ops, "_malloc_tuned", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert cpu_ops.keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    assert cpu_ops.keep_freed_memory() is False  # decided once
    monkeypatch.setattr(cpu_ops, "_malloc_tuned", None)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    build_model(CNN, get_backend("cpu", "float32"), np.random.default_rng(0))
    assert cpu_ops._malloc_tuned is (platform.libc_ver()[0] == "glibc")


def test_the_blas_description_names_its_kernels_and_a_forced_core_type(monkeypatch) -> None:
    pools = [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    text = cpu_ops.blas_kernels()
    assert f"{pools[0]['num_threads']} threads" in text and text.endswith("(OPENBLAS_CORETYPE=Haswell)")
    if pools[0].get("architecture"):
        assert f"{pools[0]['architecture']} kernels" in text
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert "OPENBLAS_CORETYPE" not in cpu_ops.blas_kernels()
    monkeypatch.setattr("threadpoolctl.threadpool_info", lambda: [])
    assert cpu_ops.blas_kernels() == "none found"


def test_the_callers_errstate_holds_in_every_chunk() -> None:
    """np.errstate is per context: chunks run by the pool's helper threads ignored the caller's
    (a diverging run printed 'overflow encountered in multiply' from them)."""
    ops = CpuOps(threads=2, own_threads=True)
    x = np.full((64, 4096), 1e30, dtype=np.float32)

    def square(rows: slice) -> None:
        np.multiply(x[rows], x[rows], out=x[rows])  # overflows to inf in every chunk

    assert len(ops.chunks(len(x), 1 << 20)) > 1  # helpers take part
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        ops.parallel_for(len(x), square, 1 << 20)
    x[...] = 1e30
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning fails the test
        with np.errstate(over="ignore"):
            ops.parallel_for(len(x), square, 1 << 20)
    assert np.isinf(x).all()


def test_threads_are_counted_where_there_is_no_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS and Windows have no os.sched_getaffinity: with a BLAS threadpoolctl does not see
    (Apple's Accelerate, which NumPy 2's macOS wheels use) the default thread count raised
    AttributeError."""
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(cpu_ops, "blas_pools", lambda: [])
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert cpu_ops.usable_cpus() == 6 and cpu_ops.default_threads() == 6


@pytest.mark.parametrize("own_threads", [False, True])
def test_a_long_update_goes_in_pieces_with_small_scratch(monkeypatch: pytest.MonkeyPatch, own_threads: bool) -> None:
    """The scratch arrays were as long as all the parameters (three more copies of a large
    network); in pieces of UPDATE_PIECE_ELEMENTS they stay that short, and every bit is the same."""
    monkeypatch.setattr(cpu_ops, "UPDATE_PIECE_ELEMENTS", 7)
    monkeypatch.setattr(cpu_ops, "SERIAL_ELEMENTS", 0)
    monkeypatch.setattr(cpu_ops, "CHUNK_ELEMENTS", 400)
    ops, ref = CpuOps(threads=2, own_threads=own_threads, compiled=False), Ops(np)  # the NumPy chains' scratch
    rng = np.random.default_rng(1)
    p, g, m, v = (rng.normal(size=301).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    for name, buffers, args in [
        ("sgd_update", "m", (0.01, 0.9, True, 0.01)),
        ("adam_update", "mv", (0.01, 0.9, 0.999, 1e-8, 3, 0.01, True)),
        ("rmsprop_update", "v", (0.01, 0.9, 1e-8, 0.0)),
    ]:
        states = [{"p": p.copy(), "m": m.copy(), "v": v.copy()} for _ in range(2)]
        for o, state in zip((ops, ref), states, strict=True):
            getattr(o, name)(state["p"], g, *(state[b] for b in buffers), *args)
        for key in "pmv":
            assert np.array_equal(states[0][key], states[1][key]), (name, key)
    if not own_threads:  # in this thread: the only one that ran it
        assert [len(b) for b in ops._local.scratch[np.dtype(np.float32)]] == [7, 7, 7]
        assert max(v.size for k, views in ops._local.scratch.items() if isinstance(k, tuple) for v in views) == 7


@pytest.mark.heavy(9)
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak RSS from Linux's /proc")
def test_building_a_large_network_takes_about_twice_its_parameters(tmp_path) -> None:
    """The weights were drawn whole in float64 and every gradient filled with zeros: 4x the
    parameters' bytes at the peak, so a network the parameter budget allowed (a quarter of the
    memory) could be killed while being built. Drawn a block at a time, gradients left to the
    system's zero pages: 2x. Measured in a fresh process (its peak RSS)."""
    import subprocess
    import sys

    script = (
        "import numpy as np\n"
        "from nnx.backend import get_backend\n"
        "from nnx.nn import build_model\n"
        "def peak():  # VmHWM: this process's own peak (ru_maxrss counts the forked parent's before exec)\n"
        "    line = next(x for x in open('/proc/self/status') if x.startswith('VmHWM'))\n"
        "    return int(line.split()[1]) * 1024\n"
        "backend = get_backend('cpu')\n"
        "if backend.ops.kernels is not None:  # Numba's own memory (~50 MB) is not the network's\n"
        "    backend.ops.kernels.warm(backend.dtype)\n"
        "before = peak()\n"
        "model = build_model([{'type': 'linear', 'out': 60000}, {'type': 'relu'}, {'type': 'linear', 'out': 10}],"
        " backend, np.random.default_rng(0))\n"
        "print((peak() - before) / (model.count_parameters() * 4))\n"
    )
    ratio = float(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert 0.9 < ratio < 2.3, ratio
