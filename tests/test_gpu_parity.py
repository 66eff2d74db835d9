"""CPU vs GPU: the same host inputs give the same results on both backends.

Each test runs against the real GPU (marked `gpu`; skipped with the reason elsewhere, and a
failure where NNX_REQUIRE_GPU is set, as scripts/gpu_check.sh does) and, where it is about the
arithmetic, also against the fused kernels emulated on the host ("emulated": nnx/gpu_kernels.py's
own CUDA C compiled by the host's C++ compiler, tests/emulated_cupy.py), which runs everywhere,
CI included. The emulation checks the kernels' arithmetic and the arguments FusedOps passes them;
only the real GPU checks CuPy, the device and its threads. Each parameter, gradient and optimizer
state array is compared on its own; float32 tolerances are measured per output from the CPU's
own float32 rounding (nnx.testing.measured_tolerances). The harness itself is exercised on CPU
backends in test_parity_harness.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import emulated_cupy
import numpy as np
import pytest
from typer.testing import CliRunner

from nnx.backend import Backend, get_backend
from nnx.cli.app import app
from nnx.data.mnist import Split, load_mnist
from nnx.io import load_model, save_model
from nnx.nn import ACTIVATIONS, Linear, SoftmaxCrossEntropy, build_model, mlp_spec
from nnx.ops import Ops
from nnx.optim import SGD
from nnx.preprocess import Preprocess
from nnx.testing import EVERY_LAYER, assert_parity, measured_tolerances, relative_error
from nnx.trainer import DeviceSplit, Trainer, evaluate

DTYPES = ["float64", "float32"]


@pytest.fixture(params=[pytest.param("gpu", marks=pytest.mark.gpu), "emulated"])
def kernels(request: pytest.FixtureRequest) -> str:
    """Where the fused kernels run: on the GPU, or emulated on the host."""
    return request.param


def fused_backend(kernels: str, dtype: str) -> Backend:
    """The GPU backend, or NumPy arrays with the GPU's fused kernels emulated on the host."""
    return get_backend("gpu", dtype) if kernels == "gpu" else emulated_cupy.backend(dtype)


def check_parity(run, dtype: str, kernels: str, atol: dict[str, float] | None = None) -> None:
    """CPU against the fused kernels in `dtype`; in float32 with tolerances measured per output."""
    cpu, other = get_backend("cpu", dtype), fused_backend(kernels, dtype)
    rtol = measured_tolerances(run, cpu, get_backend("cpu", "float64")) if dtype == "float32" else None
    assert_parity(run, cpu, other, rtol=rtol, atol=atol)


def optimizer_outputs(params: dict, opt) -> dict:
    """Parameters and every optimizer state array (moments, velocities), each on its own."""
    out = {f"param/{name}": p for name, p in params.items()}
    out.update({f"{key}/{name}": a for key, arrays in opt.state.items() for name, a in arrays.items()})
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_forward_backward(dtype: str, kernels: str) -> None:
    host = np.random.default_rng(0)
    x, dy = host.normal(size=(32, 20)), host.normal(size=(32, 7))

    def run(backend):
        layer = Linear(backend, 20, 7, "he", np.random.default_rng(1))
        y = layer.forward(backend.asarray(x), training=True)
        dx = layer.backward(backend.asarray(dy))
        return {"y": y, "dx": dx, "dW": layer.grads["W"], "db": layer.grads["b"]}

    check_parity(run, dtype, kernels)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(ACTIVATIONS))
def test_activation_forward_backward(dtype: str, kind: str, kernels: str) -> None:
    host = np.random.default_rng(2)
    x, dy = host.normal(size=(16, 33)), host.normal(size=(16, 33))

    def run(backend):
        layer = ACTIVATIONS[kind](backend)
        y = layer.forward(backend.asarray(x), training=True)
        return {"y": y, "dx": layer.backward(backend.asarray(dy))}

    check_parity(run, dtype, kernels)


@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_forward_backward(dtype: str, kernels: str) -> None:
    host = np.random.default_rng(3)
    z, y = host.normal(size=(64, 10)) * 4, host.integers(0, 10, size=64)

    def run(backend):
        loss_fn = SoftmaxCrossEntropy(backend)
        loss = loss_fn.forward(backend.asarray(z), backend.asarray(y, dtype=np.int64))
        return {"loss": loss, "dz": loss_fn.backward()}

    check_parity(run, dtype, kernels)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 1e-4), (0.9, True, 0.0)])
def test_sgd_steps(dtype: str, momentum: float, nesterov: bool, wd: float, kernels: str) -> None:
    host = np.random.default_rng(4)
    p0, grads = host.normal(size=500), host.normal(size=(3, 500))

    def run(backend):
        p = backend.asarray(p0).copy()  # the CPU's asarray is p0 itself, which the steps would change
        g = backend.xp.zeros_like(p)
        opt = SGD([("p", p, g)], 0.1, momentum, nesterov, wd, backend.ops)
        for grad in grads:
            g[...] = backend.asarray(grad)
            opt.step()
        return optimizer_outputs({"p": p}, opt)

    check_parity(run, dtype, kernels)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_kernels_match_the_xp_reference(dtype: str, kernels: str) -> None:
    """Each fused CUDA kernel against the plain xp code it replaces, on the same device."""
    gpu = fused_backend(kernels, dtype)
    fused, reference = gpu.ops, Ops(gpu.xp)
    assert type(fused) is not Ops
    host = np.random.default_rng(5)
    a, b = host.normal(size=(64, 33)), host.normal(size=33)
    z, labels = host.normal(size=(64, 10)) * 5, host.integers(0, 10, size=64)
    pixels = host.integers(0, 256, size=(64, 784), dtype=np.uint8)
    p0, g0, v0 = host.normal(size=(3, 1000))

    def run_with(ops):
        def run(backend):
            xp = backend.xp
            out = {"bias_relu": ops.bias_relu(backend.asarray(a), backend.asarray(b))}
            out["relu_backward"] = ops.relu_backward(backend.asarray(a), backend.asarray(a))
            loss, dz = ops.softmax_cross_entropy(backend.asarray(z), backend.asarray(labels, dtype=np.int64))
            out.update(loss=loss, dz=dz)
            out["normalize"] = ops.normalize(
                backend.asarray(pixels), 1 / (255 * 0.3081), 0.1307 / 0.3081, backend.dtype
            )
            for nesterov in (False, True):
                p, v = backend.asarray(p0), backend.asarray(v0)
                ops.sgd_update(p, backend.asarray(g0), v, 0.05, 0.9, nesterov, 1e-3)
                out[f"sgd_p_{nesterov}"], out[f"sgd_v_{nesterov}"] = p, v
            p = backend.asarray(p0)
            ops.sgd_update(p, backend.asarray(g0), None, 0.05, 0.0, False, 0.0)
            out["sgd_plain"] = p
            for decoupled in (False, True):
                p, m, v = backend.asarray(p0), backend.asarray(v0), backend.asarray(v0 * v0)
                ops.adam_update(p, backend.asarray(g0), m, v, 0.01, 0.9, 0.999, 1e-8, 3, 1e-2, decoupled)
                out[f"adam_p_{decoupled}"], out[f"adam_m_{decoupled}"], out[f"adam_v_{decoupled}"] = p, m, v
            p, s = backend.asarray(p0), backend.asarray(v0 * v0)
            ops.rmsprop_update(p, backend.asarray(g0), s, 0.01, 0.99, 1e-8, 1e-3)
            out["rmsprop_p"], out["rmsprop_s"] = p, s
            out["uniform"] = ops.uniform((7, 1000), 12345, backend.dtype)
            if backend.is_gpu:  # results stay on the device (NumPy's reductions give scalars)
                assert all(isinstance(value, xp.ndarray) for value in out.values())
            return out

        return run

    fused_out = run_with(fused)(gpu)
    reference_out = run_with(reference)(gpu)
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert np.array_equal(gpu.to_numpy(fused_out["uniform"]), gpu.to_numpy(reference_out["uniform"]))
    cpu_uniform = get_backend("cpu", dtype).ops.uniform((7, 1000), 12345, np.dtype(dtype))
    assert np.array_equal(cpu_uniform, gpu.to_numpy(fused_out["uniform"]))  # bit for bit on every backend
    for key in reference_out:
        err = relative_error(gpu.to_numpy(fused_out[key]), gpu.to_numpy(reference_out[key]))
        assert err <= tol, f"{key}: fused vs reference relative error {err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_im2col_col2im_and_row_sums_match_the_reference(dtype: str, kernels: str) -> None:
    """The GPU's im2col (one gathering kernel; bit for bit, for x in any memory order), col2im (one
    product, one gathering kernel) and row sums (a product with ones) against the reference's, for
    strides that overlap windows, leave gaps and skip pixels, into a slice of a larger array as
    Conv2D passes it, and for no rows at all."""
    gpu = fused_backend(kernels, dtype)
    fused, reference = gpu.ops, Ops(gpu.xp)
    host = np.random.default_rng(11)
    tol = 1e-12 if dtype == "float64" else 1e-5
    for n, c, h, w, o, k, stride, padding in [
        (3, 4, 7, 6, 5, 3, 1, 1), (2, 3, 7, 6, 5, 3, 2, 1), (2, 2, 9, 8, 3, 2, 3, 0), (2, 1, 5, 5, 4, 3, 1, 0),
        (0, 3, 6, 6, 2, 3, 1, 1),
    ]:  # fmt: skip
        oh, ow = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
        dy2 = gpu.asarray(host.normal(size=(n * oh * ow, o)))
        weights = gpu.asarray(host.normal(size=(o, k, k, c)))
        x = gpu.asarray(host.normal(size=(n, c, h, w)))
        cols = gpu.xp.full((n + 1, oh, ow, k, k, c), 7, dtype=gpu.dtype)
        fused.im2col(x, k, k, stride, padding, out=cols[1:])
        want_cols = gpu.to_numpy(reference.im2col(x, k, k, stride, padding))
        assert np.array_equal(gpu.to_numpy(cols[1:]), want_cols) and (gpu.to_numpy(cols[0]) == 7).all()
        assert np.array_equal(
            gpu.to_numpy(fused.im2col(x.transpose(0, 1, 3, 2), k, k, stride, padding)),
            gpu.to_numpy(reference.im2col(x.transpose(0, 1, 3, 2), k, k, stride, padding)),
        )
        want = gpu.to_numpy(reference.col2im_product(dy2, weights, (n, c, h, w), stride, padding))
        padded = gpu.xp.zeros((n + 2, h + 2 * padding, w + 2 * padding, c), dtype=gpu.dtype)
        got = fused.col2im_product(dy2, weights, (n, c, h, w), stride, padding, out=padded[1 : n + 1])
        assert got.shape == (n, c, h, w)
        assert relative_error(gpu.to_numpy(got), want) <= tol, (n, c, h, w, k, stride, padding)
        assert not gpu.to_numpy(padded[0]).any() and not gpu.to_numpy(padded[-1]).any()  # only its slice written
        row_sums = fused.sum_rows(dy2, out=gpu.xp.full(o, 7, dtype=gpu.dtype))
        assert relative_error(gpu.to_numpy(row_sums), gpu.to_numpy(reference.sum_rows(dy2))) <= tol
        if n:
            assert relative_error(gpu.to_numpy(fused.sum_rows(dy2)), gpu.to_numpy(dy2).sum(axis=0)) <= tol
    x = np.array([[1.0, np.nan, np.inf], [2.0, 1.0, 1.0]])
    assert np.array_equal(gpu.to_numpy(fused.sum_rows(gpu.asarray(x))), [3.0, np.nan, np.inf], equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_max_pool_matches_the_reference(dtype: str, kernels: str) -> None:
    """The GPU's pooling kernels against the reference, bit for bit (no arithmetic to round): ties
    (windows of zeros after a ReLU) go to the first maximum, a NaN in a window gives NaN and slot 0,
    a NaN or inf in dy stays NaN where masked, with and without the ReLU's mask; windows that tile
    the image, overlap (3x3, stride 2), leave a border (odd sizes), and no images."""
    gpu = fused_backend(kernels, dtype)
    fused, reference = gpu.ops, Ops(gpu.xp)
    host = np.random.default_rng(12)
    for n, h, w, c, size, stride in [
        (3, 8, 6, 5, 2, 2), (2, 7, 9, 3, 2, 2), (2, 9, 7, 4, 3, 2), (2, 6, 6, 2, 3, 3), (0, 4, 4, 3, 2, 2),
    ]:  # fmt: skip
        x = np.maximum(host.normal(size=(n, h, w, c)), 0)  # about half zeros: many ties
        if n:  # NaN in the first slot of a window, and in a later one
            x[0, 0, 0, 0] = x[0, 1, 1, 1] = np.nan
        oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
        dy = host.normal(size=(n, oh, ow, c))
        if n:
            dy[-1, 0, 0, :2] = [np.nan, np.inf]
        results = []
        for ops in (fused, reference):
            y = gpu.xp.full((n, oh, ow, c), 7, dtype=gpu.dtype)
            first = gpu.xp.full((n, oh, ow, c), 99, dtype=np.uint8)
            ops.max_pool(gpu.asarray(x), size, stride, out=y, first=first)
            out = {"y": y, "first": first}
            for relu in (False, True):
                dx = gpu.xp.full((n, h, w, c), 7, dtype=gpu.dtype)
                with np.errstate(invalid="ignore"):  # inf * 0 where masked: NaN, as intended
                    ops.max_pool_backward(gpu.asarray(dy), y, first, size, stride, relu, out=dx)
                out[f"dx relu={relu}"] = dx
            results.append({key: gpu.to_numpy(value) for key, value in out.items()})
        for key in results[1]:
            assert np.array_equal(results[0][key], results[1][key], equal_nan=True), (key, n, h, w, size, stride)
        if n:
            assert np.isnan(results[0]["y"][0, 0, 0, :2]).all() and not results[0]["first"][0, 0, 0, :2].any()


def train_steps(backend, subset: Split, test: Split, steps: int = 300, batch: int = 64):
    model = build_model(mlp_spec([784, 64, 10]), backend, np.random.default_rng([0, 0]))
    optimizer = SGD(model.flat_parameters(), 0.02, 0.9, True, 0.0, backend.ops)
    trainer = Trainer(model, optimizer, backend, Preprocess.named("standard"), schedule="cosine")
    trainer.fit(DeviceSplit(subset, backend), None, 1, batch, 0)
    _, _, predictions = evaluate(model, DeviceSplit(test, backend), Preprocess.named("standard"), backend)
    return model.state(), backend.to_numpy(predictions)


@pytest.mark.mnist
@pytest.mark.parametrize("dtype,weight_tol", [("float64", 1e-9), ("float32", 1e-3)])
def test_300_steps_of_training_agree(mnist_dir: Path, dtype: str, weight_tol: float, kernels: str) -> None:
    mnist = load_mnist(mnist_dir, 5000)
    subset = Split(mnist.train.images[: 300 * 64], mnist.train.labels[: 300 * 64])
    cpu_weights, cpu_pred = train_steps(get_backend("cpu", dtype), subset, mnist.test)
    gpu_weights, gpu_pred = train_steps(fused_backend(kernels, dtype), subset, mnist.test)
    for name in cpu_weights:
        err = relative_error(cpu_weights[name], gpu_weights[name])
        assert err <= weight_tol, f"{name}: relative error {err:.3g}"
    assert (cpu_pred == gpu_pred).mean() >= 0.999


@pytest.mark.gpu
def test_model_moves_between_devices(tmp_path: Path) -> None:
    gpu = get_backend("gpu", "float32")
    model = build_model(mlp_spec([784, 32, 10]), gpu, np.random.default_rng(0))
    before = {name: gpu.to_numpy(p).copy() for name, p, _ in model.parameters()}
    save_model(tmp_path / "gpu.npz", model, Preprocess())
    assert all(isinstance(p, gpu.xp.ndarray) for _, p, _ in model.parameters())  # saving did not move it
    on_cpu = load_model(tmp_path / "gpu.npz", get_backend("cpu", "float32"))
    for name, p, _ in on_cpu.model.parameters():
        assert np.array_equal(p, before[name])
    save_model(tmp_path / "cpu.npz", on_cpu.model, Preprocess())
    back = load_model(tmp_path / "cpu.npz", gpu)
    for name, p, _ in back.model.parameters():
        assert np.array_equal(gpu.to_numpy(p), before[name])


@pytest.mark.gpu
def test_tf32_is_off_by_default() -> None:
    import os

    assert get_backend("gpu", "float32").tf32 is False
    assert os.environ.get("CUPY_TF32", "0") != "1"


@pytest.mark.gpu
def test_cpu_arrays_are_refused_by_a_gpu_model() -> None:
    from nnx.errors import BackendError

    gpu = get_backend("gpu")
    model = build_model(mlp_spec([4, 2]), gpu, np.random.default_rng(0))
    with pytest.raises(BackendError, match="numpy.ndarray but the model lives on gpu:0"):
        model.forward(np.zeros((1, 4), dtype=np.float32))


@pytest.mark.gpu
@pytest.mark.mnist
def test_train_on_gpu_reaches_97_5(mnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu-run"
    result = CliRunner().invoke(app, ["train", "--device", "gpu", "--data-dir", str(mnist_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "gpu:0" and summary["test_accuracy"] >= 0.975 and summary["tf32"] is False
    # The GPU-trained model on the CPU: the accuracy as a number, within a few near-tie test images
    # (formatted strings would flip on one image).
    cpu = get_backend("cpu", "float32")
    loaded = load_model(out / "model.npz", cpu)
    test = load_mnist(mnist_dir, 0).test
    _, cpu_accuracy, _ = evaluate(loaded.model, DeviceSplit(test, cpu), loaded.preprocess, cpu)
    assert abs(cpu_accuracy - summary["test_accuracy"]) <= 3 / len(test)
    # The commands scripts read, on the GPU: evaluate --json and predict --json (a run directory).
    common = ["--device", "gpu", "--data-dir", str(mnist_dir), "--json"]
    evaluated = CliRunner().invoke(app, ["evaluate", str(out), *common])
    assert evaluated.exit_code == 0, evaluated.output
    data = json.loads(evaluated.stdout)
    assert "gpu" in data["device"] and abs(data["accuracy"] - summary["test_accuracy"]) <= 3 / len(test)
    assert sum(map(sum, data["confusion"])) == len(test) == data["test_images"]
    predicted = CliRunner().invoke(app, ["predict", str(out), "--test-index", "0", *common])
    assert predicted.exit_code == 0, predicted.output
    (answer,) = json.loads(predicted.stdout)
    assert answer["label"] == int(test.labels[0]) and abs(sum(answer["probabilities"]) - 1) < 1e-6


CNN_SPEC = EVERY_LAYER  # every layer kind, in one network


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_layer_forward_backward(dtype: str, kernels: str) -> None:
    """Conv, pooling, batch norm, dropout (same counter-based masks) and the newer activations,
    in one network: logits, every gradient and the running statistics agree."""
    host = np.random.default_rng(6)
    x, labels = host.integers(0, 256, size=(16, 784), dtype=np.uint8), host.integers(0, 10, size=16)

    def run(backend):
        model = build_model(CNN_SPEC, backend, np.random.default_rng(7), classes=10)
        model.set_random_key(1, 2, 3)
        z = model.logits(Preprocess.named("standard")(backend.asarray(x), backend), training=True)
        loss_fn = SoftmaxCrossEntropy(backend)
        loss = loss_fn.forward(z, backend.asarray(labels, dtype=np.int64))
        model.backward(loss_fn.backward())
        out = {"z": z, "loss": loss, **{f"buffer/{name}": b for name, b in model.buffers()}}
        for name, p, g in model.parameters():  # each layer on its own: a flat vector hides a small one
            out[f"param/{name}"], out[f"grad/{name}"] = p, g
        return out

    # A bias right before a batch norm has no effect on the loss (the norm subtracts the batch mean
    # again): its exact gradient is 0, and each device's is rounding noise (measured on the CPU:
    # 5e-15 of the layer's weight gradient in float64, 3e-6 in float32). Those are held to 10,000
    # ulps of the weight gradient, absolute, where a wrong kernel would be off by percents.
    reference = run(get_backend("cpu", dtype))
    eps = float(np.finfo(dtype).eps)
    atol = {
        f"grad/{i}.b": 1e4 * eps * float(np.abs(reference[f"grad/{i}.W"]).max())
        for i in range(1, len(CNN_SPEC))
        if CNN_SPEC[i]["type"] == "batchnorm" and f"grad/{i}.b" in reference
    }
    assert sorted(atol) == ["grad/1.b", "grad/10.b"]
    check_parity(run, dtype, kernels, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop"])
def test_adaptive_optimizer_steps(dtype: str, name: str, kernels: str) -> None:
    from nnx.optim import OPTIMIZERS

    host = np.random.default_rng(8)
    p0, grads = host.normal(size=500), host.normal(size=(3, 500))

    def run(backend):
        p = backend.asarray(p0).copy()  # the CPU's asarray is p0 itself, which the steps would change
        g = backend.xp.zeros_like(p)
        opt = OPTIMIZERS[name]([("p", p, g)], lr=0.01, weight_decay=1e-2, ops=backend.ops, clip_norm=10.0)
        for grad in grads:
            g[...] = backend.asarray(grad)
            opt.step()
        assert opt.state, "an adaptive optimizer keeps state"
        return optimizer_outputs({"p": p}, opt)

    check_parity(run, dtype, kernels)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_optimizers_take_their_constants_from_the_host(dtype: str, kernels: str) -> None:
    """1 - b2, 1 - rho and 1 - lr wd computed in float32 on the device differ from the host's
    double by about 1e-5 relative (1 - 0.999f = 0.99998713e-3): after one step from zero moments,
    v = (1 - b2) g^2 exactly, so a device-side constant shows at once."""
    gpu = fused_backend(kernels, dtype)
    host = np.random.default_rng(9)
    p0, g0 = host.normal(size=(2, 4096))
    expected_v = (np.asarray(1 - 0.999, dtype=dtype) * np.square(g0.astype(dtype))).astype(dtype)
    p, m, v = gpu.asarray(p0), gpu.xp.zeros(4096, dtype=dtype), gpu.xp.zeros(4096, dtype=dtype)
    gpu.ops.adam_update(p, gpu.asarray(g0), m, v, 0.01, 0.9, 0.999, 1e-8, 1, 0.0, False)
    assert relative_error(gpu.to_numpy(v), expected_v) <= 4 * np.finfo(dtype).eps
    s = gpu.xp.zeros(4096, dtype=dtype)
    gpu.ops.rmsprop_update(gpu.asarray(p0), gpu.asarray(g0), s, 0.01, 0.99, 1e-8, 0.0)
    expected_s = (np.asarray(1 - 0.99, dtype=dtype) * np.square(g0.astype(dtype))).astype(dtype)
    assert relative_error(gpu.to_numpy(s), expected_s) <= 4 * np.finfo(dtype).eps
