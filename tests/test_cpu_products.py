"""nnx/cpu_products.py, the float32 products on AVX-512: float64's numbers to float32 rounding at
every edge of its tiles, nothing written outside the output, the same bits on any number of
threads, and the CPU's ops handing them exactly the products they take."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import nnx.cpu_ops as cpu_ops
from nnx.backend import Backend
from nnx.cpu_ops import CpuOps
from nnx.nn import SoftmaxCrossEntropy, build_model, mlp_spec
from nnx.optim import SGD


def why_not() -> str | None:
    if cpu_ops.compiled_kernels() is None:
        return "Numba is not installed (a dependency of nnx; the GPU check does not carry it)"
    if cpu_ops.products_turned_off():
        return "NNX_PRODUCTS=blas is set"
    if not cpu_ops.cpu_has_avx512():
        return "this CPU has no AVX-512: BLAS does every product here"
    return None


pytestmark = pytest.mark.skipif(why_not() is not None, reason=str(why_not()))

rng = np.random.default_rng(0)


def ops(threads: int = 2) -> CpuOps:
    o = CpuOps(threads=threads)
    assert o.products is not None
    return o


def close(c: np.ndarray, exact: np.ndarray) -> None:
    """Equal to float32 rounding of sums of up to a few hundred terms of size ~1."""
    assert c.dtype == np.float32 and c.shape == exact.shape
    np.testing.assert_allclose(c, exact, rtol=0, atol=2e-5 * max(1.0, np.abs(exact).max()))


@pytest.mark.parametrize("m", [8, 9, 12, 17, 65])
@pytest.mark.parametrize("n", [1, 10, 15, 16, 17, 40, 63, 64, 65, 100, 130])
def test_products_are_float64_s_to_rounding_at_every_tile_edge(m: int, n: int) -> None:
    """y = x W, dx = dy W^T (W transposed, a view) and dW = x^T dy, for outputs narrower than a
    vector (masked), between one vector and a tile (moved back over done columns), a tile and
    past it (panels copied), and rows past a whole number of tiles."""
    o = ops()
    for k in (1, 7, 70):
        x = rng.standard_normal((m, k), dtype=np.float32)
        W = rng.standard_normal((k, n), dtype=np.float32)
        Wt = rng.standard_normal((n, k), dtype=np.float32).T  # a transposed view, as W.T in dx = dy W^T
        dy = rng.standard_normal((m, n), dtype=np.float32)
        assert o._takes(x, W, m, n, k) and o._takes(x, Wt, m, n, k)
        close(o.matmul(x, W, 1), x.astype(np.float64) @ W)
        close(o.matmul(x, Wt, 1), x.astype(np.float64) @ Wt)
        if k >= 8 or n >= 64:  # dW (k, n): at least one tile of rows
            close(o.matmul_tn(x, dy), x.T.astype(np.float64) @ dy)


def test_nothing_outside_the_output_is_written() -> None:
    """dW lands in a view of the flat gradient buffer, between other parameters' gradients: the
    masked lanes (n = 10) and the tiles moved back (n = 70) must leave those alone."""
    o = ops()
    for n in (10, 70):
        x, dy = rng.standard_normal((33, 20), dtype=np.float32), rng.standard_normal((33, n), dtype=np.float32)
        flat = np.full(5 + 20 * n + 7, 7.0, dtype=np.float32)
        dW = flat[5 : 5 + 20 * n].reshape(20, n)
        assert o.matmul_tn(x, dy, out=dW) is dW
        close(dW, x.T.astype(np.float64) @ dy)
        assert (flat[:5] == 7).all() and (flat[5 + 20 * n :] == 7).all()


def test_the_bits_do_not_depend_on_the_threads() -> None:
    """Each element is one chain of multiply-adds in order, whichever thread's rows hold it."""
    x = rng.standard_normal((203, 300), dtype=np.float32)
    W = rng.standard_normal((300, 100), dtype=np.float32)
    dy = rng.standard_normal((203, 100), dtype=np.float32)
    assert 203 * 100 * 300 >= cpu_ops.PARALLEL_PRODUCT_MACS  # cut over the threads where there are several
    outs = [(ops(t).matmul(x, W, 1), ops(t).matmul_tn(x, dy), ops(t).matmul(dy, W.T, 1)) for t in (1, 2, 3)]
    for other in outs[1:]:
        for a, b in zip(outs[0], other, strict=True):
            assert np.array_equal(a, b)


def test_products_from_several_threads_at_once() -> None:
    """`nnx serve` predicts on several threads: one product at a time gets Numba's threads, the
    others run in their own thread, and every result is right."""
    o = ops()
    x = rng.standard_normal((256, 784), dtype=np.float32)
    W = rng.standard_normal((784, 64), dtype=np.float32)
    exact = x.astype(np.float64) @ W
    results: list[np.ndarray] = []

    def predict() -> None:
        for _ in range(20):
            results.append(o.matmul(x, W, 1))

    workers = [threading.Thread(target=predict) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(results) == 80
    for c in results:
        close(c, exact)


def test_the_bias_gradient_is_summed_without_blas() -> None:
    o = ops()
    dy = rng.standard_normal((1000, 70), dtype=np.float32)
    close(o.sum_rows(dy), dy.astype(np.float64).sum(axis=0))
    flat = np.full(80, 3.0, dtype=np.float32)
    assert o.sum_rows(dy, out=flat[5:75]) is not None
    close(flat[5:75], dy.astype(np.float64).sum(axis=0))
    assert (flat[:5] == 3).all() and (flat[75:] == 3).all()


def test_blas_keeps_what_the_tiles_do_not_take() -> None:
    """float64, too few rows, a non-contiguous a, and every product of a network with convolutions
    (own threads, whose chunks the spinning of Numba's threads would slow) go to BLAS."""
    o = ops()
    x32 = rng.standard_normal((64, 30), dtype=np.float32)
    W32 = rng.standard_normal((30, 64), dtype=np.float32)
    assert o._takes(x32, W32, 64, 64, 30)
    assert not o._takes(x32.astype(np.float64), W32.astype(np.float64), 64, 64, 30)
    assert not o._takes(x32[:3], W32[:, :10], 3, 10, 30)  # 3 rows, narrow: no tile fits
    assert not o._takes(x32[:, ::2], W32[::2], 64, 64, 15)
    assert not CpuOps(own_threads=True)._takes(x32, W32, 64, 64, 30)
    assert not CpuOps(own_threads=True)._takes_sum(x32, None)
    close(o.matmul(x32[:3], W32[:, :10], 1), x32[:3].astype(np.float64) @ W32[:, :10])


def test_mismatched_shapes_raise_as_numpy_s_do() -> None:
    """The tiles index raw memory: shapes that do not fit go to NumPy, which raises, rather than
    to a loop that would read or write past the arrays."""
    o = ops()
    x, W = np.ones((64, 30), dtype=np.float32), np.ones((31, 64), dtype=np.float32)
    with pytest.raises(ValueError):
        o.matmul(x, W, 1)
    with pytest.raises(ValueError):
        o.matmul_tn(x, np.ones((65, 64), dtype=np.float32))
    with pytest.raises(ValueError):
        o.matmul_tn(x, np.ones((64, 64), dtype=np.float32), out=np.empty((30, 63), dtype=np.float32))
    with pytest.raises(ValueError):
        o.sum_rows(np.ones((64, 70), dtype=np.float32), out=np.empty(69, dtype=np.float32))


def test_nnx_products_blas_turns_them_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_ops, "_products", False)
    monkeypatch.setenv("NNX_PRODUCTS", "blas")
    assert cpu_ops.avx512_products() is None and CpuOps().products is None
    monkeypatch.setattr(cpu_ops, "_products", False)
    monkeypatch.delenv("NNX_PRODUCTS")
    assert cpu_ops.avx512_products() is not None


def test_an_mlp_trains_to_blas_s_numbers() -> None:
    """Ten SGD steps of 784-64-10 on the tiles and on BLAS: the same weights to float32 rounding."""

    def train(products: bool) -> np.ndarray:
        o = CpuOps(threads=2)
        if not products:
            o.products = None
        backend = Backend("cpu", np, np.dtype(np.float32), ops=o)
        model = build_model(mlp_spec([784, 64, 10]), backend, np.random.default_rng(0))
        sgd = SGD(model.flat_parameters(), 0.05, 0.9, True, 0.0, o)
        loss = SoftmaxCrossEntropy(backend)
        data = np.random.default_rng(1)
        for _ in range(10):
            x = data.standard_normal((128, 784), dtype=np.float32)
            loss.forward(model.logits(x, training=True), data.integers(0, 10, 128))
            model.backward(loss.backward())
            sgd.step()
        return model.flat_params.copy()

    tiles, blas = train(True), train(False)
    assert not np.array_equal(tiles, blas)  # (another order of the sums: the tiles did run)
    np.testing.assert_allclose(tiles, blas, rtol=0, atol=1e-4)


def test_info_names_who_does_the_products() -> None:
    from nnx.cli.info_cmd import _cpu_products

    assert "AVX-512" in _cpu_products()
