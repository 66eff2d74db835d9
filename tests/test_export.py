"""Taking a model elsewhere: ONNX (run by onnxruntime against nnx on the whole test set) and
safetensors (read back by nnx.load with nnx's own checks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import nnx
import nnx.errors as nnx_errors
from nnx.backend import get_backend
from nnx.cli.app import app
from nnx.data.mnist import Split, load_mnist, load_test
from nnx.errors import ModelFileError
from nnx.io import save_model
from nnx.nn import build_model
from nnx.preprocess import Preprocess
from nnx.testing import EVERY_LAYER
from nnx.trainer import DeviceSplit, Trainer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def every_layer_model(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Briefly trained (so batch norm's running statistics are real) on 3,000 MNIST images."""
    backend = get_backend("cpu", "float32")
    model = build_model(EVERY_LAYER, backend, np.random.default_rng(0), classes=10)
    mnist = load_mnist(mnist_dir, 0)
    train = Split(mnist.train.images[:3000], mnist.train.labels[:3000])
    from nnx.optim import Adam

    preprocess = Preprocess.named("standard")
    Trainer(model, Adam(model.flat_parameters(), 3e-3), backend, preprocess).fit(
        DeviceSplit(train, backend), None, 1, 50, 0
    )
    path = tmp_path_factory.mktemp("every") / "model.npz"
    save_model(path, model, preprocess)
    return path


def onnx_outputs(path: Path, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(["logits", "probabilities"], {"pixels": pixels})
    return logits, probabilities


def nnx_logits(model: nnx.Model, pixels: np.ndarray) -> np.ndarray:
    backend = model.backend
    x = model.preprocess(backend.asarray(pixels), backend)
    return np.concatenate([model.network.logits(x[i : i + 1000], training=False) for i in range(0, len(x), 1000)])


@pytest.mark.mnist
@pytest.mark.parametrize("which", ["mlp", "every_layer"])
def test_onnx_matches_nnx_on_the_whole_test_set(which, trained_mlp, every_layer_model, mnist_dir, tmp_path) -> None:
    source = trained_mlp if which == "mlp" else every_layer_model
    out = tmp_path / "model.onnx"
    result = CliRunner().invoke(app, ["export", str(source), "--format", "onnx", "-o", str(out)])
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    pixels = load_test(mnist_dir).images.reshape(-1, 784)
    model = nnx.load(source)
    theirs, probabilities = onnx_outputs(out, pixels)
    ours = nnx_logits(model, pixels)
    assert theirs.dtype == np.float32 and theirs.shape == ours.shape == (10_000, 10)
    # Probabilities within 1e-5; logits (up to ~30 in size) within float32 rounding of their
    # scale: onnxruntime's matrix products add in another order than OpenBLAS's.
    assert np.abs(probabilities - model.predict(pixels).probabilities).max() <= 1e-5
    assert np.abs(theirs - ours).max() <= 2e-6 * np.abs(ours).max()
    assert np.array_equal(theirs.argmax(axis=1), ours.argmax(axis=1))
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_onnx_refuses_a_layer_it_cannot_export(tmp_path: Path) -> None:
    from nnx.errors import NnxError
    from nnx.export.onnx import export_onnx

    model = build_model([{"type": "linear", "in": 784, "out": 10}], get_backend("cpu"), np.random.default_rng(0))
    model.layers[0].spec = lambda: {"type": "mystery"}
    with pytest.raises(NnxError, match="no exporter for layer 'mystery'"):
        export_onnx(model, Preprocess(), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_safetensors_round_trip_through_nnx_load(every_layer_model: Path, mnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    result = CliRunner().invoke(app, ["export", str(every_layer_model), "-f", "safetensors", "-o", str(out)])
    assert result.exit_code == 0, result.output
    pixels = load_test(mnist_dir).images[:500]
    original, copy = nnx.load(every_layer_model), nnx.load(out)
    assert np.array_equal(original.predict(pixels).probabilities, copy.predict(pixels).probabilities)
    evaluated = CliRunner().invoke(app, ["evaluate", str(out), "--data-dir", str(mnist_dir), "-q"])
    assert evaluated.exit_code == 0, evaluated.output
    renamed = out.rename(tmp_path / "model.weights")  # known by its first bytes under any name
    assert np.array_equal(original.predict(pixels).probabilities, nnx.load(renamed).predict(pixels).probabilities)


def test_safetensors_files_are_checked_before_use(every_layer_model: Path, tmp_path: Path) -> None:
    import safetensors.numpy

    out = tmp_path / "m.safetensors"
    CliRunner().invoke(app, ["export", str(every_layer_model), "-f", "safetensors", "-o", str(out)])
    tensors = safetensors.numpy.load_file(str(out))
    foreign = tmp_path / "foreign.safetensors"
    safetensors.numpy.save_file(tensors, str(foreign))  # no nnx metadata
    with pytest.raises(ModelFileError, match="without nnx's metadata"):
        nnx.load(foreign)
    with open(out, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    meta = json.loads(header["__metadata__"]["nnx"])
    meta["architecture"][-2]["out"] = 11  # the last linear layer claims 11 outputs
    tampered = tmp_path / "tampered.safetensors"
    safetensors.numpy.save_file(tensors, str(tampered), metadata={"nnx": json.dumps(meta)})
    with pytest.raises(ModelFileError, match="do not fit the architecture"):
        nnx.load(tampered)
    for text in ["{not json", "[" * 3000, "9" * 5000]:  # json.loads: ValueError, RecursionError, ValueError
        safetensors.numpy.save_file(tensors, str(tampered), metadata={"nnx": text})
        with pytest.raises(ModelFileError, match="its nnx metadata is not JSON nnx wrote"):
            nnx.load(tampered)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        nnx.load(tmp_path / "junk.safetensors")


def test_export_cli_refuses_to_overwrite_and_unknown_formats(every_layer_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    out.write_text("mine")
    result = CliRunner().invoke(app, ["export", str(every_layer_model), "-o", str(out)])
    assert result.exit_code == 2 and "exists" in result.output and out.read_text() == "mine"
    result = CliRunner().invoke(app, ["export", str(every_layer_model), "-f", "tflite", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--format tflite: unknown" in result.output
    folder = tmp_path / "folder"
    (folder / "keep").mkdir(parents=True)
    result = CliRunner().invoke(app, ["export", str(every_layer_model), "-o", str(folder), "--force"])
    assert result.exit_code == 2 and "is a directory" in result.output and (folder / "keep").is_dir()
    result = CliRunner().invoke(app, ["export", str(every_layer_model), "-o", str(out / "m.onnx")])  # under a file
    assert result.exit_code == 2 and f"cannot write {out / 'm.onnx'}" in result.output.replace("\n", "")


def test_export_format_follows_the_output_name(every_layer_model: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.npz").write_bytes(every_layer_model.read_bytes())
    assert CliRunner().invoke(app, ["export", str(run)]).exit_code == 0 and (run / "model.onnx").is_file()
    for name, magic in [("w.safetensors", b"{"), ("W.SAFETENSORS", b"{"), ("m.onnx", b"\x08"), ("m.bin", b"\x08")]:
        result = CliRunner().invoke(app, ["export", str(every_layer_model), "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert (tmp_path / name).read_bytes()[8 if magic == b"{" else 0 :][:1] == magic  # safetensors: JSON after 8
    result = CliRunner().invoke(
        app, ["export", str(every_layer_model), "-f", "onnx", "-o", str(tmp_path / "x.safetensors")]
    )
    assert result.exit_code == 2 and "a .safetensors name for --format onnx" in result.output
    assert not (tmp_path / "x.safetensors").exists()
    for args in (["-o", str(tmp_path / "x.npz")], ["-f", "onnx", "-o", str(tmp_path / "x.NPZ")]):
        result = CliRunner().invoke(app, ["export", str(every_layer_model), *args])
        assert result.exit_code == 2 and ".npz is nnx's own model file" in result.output, result.output
    assert not list(tmp_path.glob("x.*"))


def test_a_loaded_model_exports_from_python(every_layer_model: Path, tmp_path: Path) -> None:
    model = nnx.load(every_layer_model)
    written = model.export(tmp_path / "m.safetensors")  # the format from the name, as nnx export does
    again = nnx.load(written)
    images = np.random.default_rng(0).integers(0, 256, (5, 784), dtype=np.uint8)
    assert np.array_equal(again.predict(images).probabilities, model.predict(images).probabilities)
    onnx_file = model.export(tmp_path / "m.onnx")
    session = ort.InferenceSession(str(onnx_file))
    probabilities = session.run(["probabilities"], {"pixels": images})[0]
    assert np.allclose(probabilities, model.predict(images).probabilities, atol=1e-5)
    with pytest.raises(nnx_errors.NnxError, match="exists; choose another --output or add --force"):
        model.export(onnx_file)
    assert model.export(onnx_file, force=True) == onnx_file
