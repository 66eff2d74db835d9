"""The Python API a notebook uses: nnx.train, nnx.load, Model.predict and Model.evaluate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnx
from nnx.errors import NnxError
from nnx.trainer import Callback


def test_the_public_surface_is_small_and_lazy() -> None:
    assert set(nnx.__all__) == {"Model", "Prediction", "Run", "__version__", "load", "train"}
    # `import nnx` (and so `nnx --help`) does not pull in the training machinery
    code = "import sys, nnx; print('nnx.api' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


class Epochs(Callback):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_epoch_end(self, metrics) -> None:
        self.seen.append(metrics.epoch)


def test_train_load_predict_evaluate(tiny_mnist: Path, tmp_path: Path) -> None:
    callback = Epochs()
    run = nnx.train(
        "mnist_mlp",
        {"training.epochs": 2, "training.validation": 100, "data.dir": str(tiny_mnist)},
        out=tmp_path / "run",
        callbacks=[callback],
    )
    assert isinstance(run, nnx.Run) and run.path == tmp_path / "run" and not run.interrupted
    assert callback.seen == [1, 2] and [m.epoch for m in run.history] == [1, 2]
    assert run.summary["epochs"] == 2 and (run.path / "model.npz").is_file()

    model = nnx.load(str(run.path / "model.npz"))  # str or Path
    assert isinstance(model, nnx.Model) and "784-64-10" in repr(model)
    images = np.stack([np.asarray(i) for i in nnx_images(tiny_mnist)])
    batch = model.predict(images)
    assert batch.classes.shape == (len(images),) and batch.probabilities.shape == (len(images), 10)
    assert np.allclose(batch.probabilities.sum(axis=1), 1)
    one = model.predict(images[0])  # a single 28x28 image
    assert one.classes.shape == (1,) and one.classes[0] == batch.classes[0]
    as_floats = model.predict(images.astype(np.float32) / 255)  # floats in 0-1
    assert np.array_equal(as_floats.classes, batch.classes)
    flat = model.predict(images.reshape(len(images), 784))
    assert np.array_equal(flat.probabilities, batch.probabilities)
    for channels in ((len(images), 1, 28, 28), (len(images), 28, 28, 1)):  # PyTorch's and Keras's layouts
        assert np.array_equal(model.predict(images.reshape(channels)).probabilities, batch.probabilities)
    assert model.predict(images[:0]).classes.shape == (0,)

    layers = model.summary()  # as nnx info shows them
    assert [row["layer"].split("(")[0] for row in layers] == ["linear", "relu", "linear"]
    assert [row["output"] for row in layers] == [(64,), (64,), (10,)]
    assert sum(row["parameters"] for row in layers) == 50_890
    shown = repr(layers).splitlines()  # at a prompt or in a notebook: a table, as Keras's summary
    assert shown[0].split() == ["layer", "output", "parameters"] and shown[-1].split() == ["total", "50,890"]
    assert any(line.startswith("linear(in=784, out=64") and line.endswith("50,240") for line in shown)
    assert str(layers) == repr(layers)

    result = model.evaluate(data_dir=tiny_mnist)
    assert abs(result["accuracy"] - run.summary["test_accuracy"]) < 1e-12
    assert result["confusion"].sum() == 200 and result["per_class_accuracy"].shape == (10,)


def test_predict_takes_image_files_and_pil_images_as_nnx_predict_does(tiny_mnist: Path, tmp_path: Path) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from nnx.cli.app import app

    run = nnx.train(None, {"training.epochs": 2, "training.validation": 100, "data.dir": str(tiny_mnist)},
                    out=tmp_path / "r")  # fmt: skip
    model = nnx.load(run.path)
    images = nnx_images(tiny_mnist)
    # Dark ink on white paper, at twice the size: prepared (inverted, fitted) like the CLI's input.
    paper = [Image.fromarray(255 - image.reshape(28, 28)).resize((56, 56)) for image in images[:3]]
    files = []
    for i, picture in enumerate(paper):
        files.append(tmp_path / f"digit{i}.png")
        picture.save(files[-1])
    by_file = model.predict(files)
    assert by_file.classes.shape == (3,)
    assert np.array_equal(model.predict([str(f) for f in files]).probabilities, by_file.probabilities)
    assert np.array_equal(model.predict(paper).probabilities, by_file.probabilities)
    assert model.predict(files[1]).classes[0] == by_file.classes[1]
    for centre, flags in ((None, []), (False, ["--as-is"]), (True, ["--mnist-style"])):
        cli = CliRunner().invoke(app, ["predict", str(run.path), str(files[2]), *flags])
        predicted = model.predict(paper[2], mnist_style=centre).classes[0]
        assert f"predicted {predicted} with" in cli.output, cli.output
    with pytest.raises(NnxError, match="nowhere.png: no such file"):
        model.predict(tmp_path / "nowhere.png")
    with pytest.raises(NnxError, match="mnist_style: for image files and PIL images"):
        model.predict(images, mnist_style=True)


def nnx_images(folder: Path) -> np.ndarray:
    from nnx.data.mnist import load_test

    return load_test(folder).images[:20]


@pytest.mark.parametrize(
    "images,message",
    [
        (np.zeros((3, 27, 27)), r"shape \(3, 27, 27\) is not one 28x28 image or a batch"),
        (np.zeros((28, 28, 3), dtype=np.uint8), r"\(28, 28, 3\) .*a colour image\? pass it as a PIL image"),
        (np.zeros(2 * 784), r"shape \(1568,\) is not one 28x28 image"),
        (np.zeros((56, 28)), r"shape \(56, 28\) is not one 28x28 image"),
        (np.full((1, 784), np.nan), "NaN"),
        (np.full((1, 784), 300.0), "expected 0-1 or 0-255"),
        (np.array(["a"] * 784), "expected numbers"),
    ],
)
def test_predict_refuses_what_is_not_images(tiny_mnist: Path, tmp_path: Path, images, message) -> None:
    run = nnx.train(None, {"training.epochs": 1, "training.validation": 100, "data.dir": str(tiny_mnist)},
                    out=tmp_path / "r")  # fmt: skip
    with pytest.raises(NnxError, match=message):
        nnx.load(run.path / "model.npz").predict(images)


def test_a_config_can_be_a_dict_and_is_validated_like_a_file(tiny_mnist: Path, tmp_path: Path) -> None:
    config = {"name": "small", "model": {"hidden": [16]}, "training": {"epochs": 1, "validation": 100}}
    run = nnx.train(config, {"data.dir": str(tiny_mnist)}, out=tmp_path / "r")
    assert run.summary["model_description"] == "784-16-10" and run.summary["epochs"] == 1
    assert config == {"name": "small", "model": {"hidden": [16]}, "training": {"epochs": 1, "validation": 100}}
    with pytest.raises(NnxError, match="config 'small': training.epochs: Input should be greater than or equal to 1"):
        nnx.train({**config, "training": {"epochs": 0}})
    with pytest.raises(NnxError, match="overrides: 1 is not a dotted key such as 'training.epochs'"):
        nnx.train(config, {1: 2})
    with pytest.raises(NnxError, match="overrides: 'training..epochs' is not a dotted key"):
        nnx.train(config, {"training..epochs": 2})


def test_overrides_of_the_wrong_kind_are_said_and_a_lone_assignment_is_one(tiny_mnist: Path, tmp_path: Path) -> None:
    """A string as overrides failed with AttributeError; one as assignments was read a character at a time."""
    for resume in (None, tmp_path):
        with pytest.raises(NnxError, match="overrides: expected a dict by dotted key .* got a str; .* assignments="):
            nnx.train("mnist_mlp", "training.epochs=1", resume=resume)
    plan = nnx.api.check_train("mnist_mlp", {"data.dir": str(tiny_mnist)}, assignments="training.epochs=3")
    assert plan["config"].training.epochs == 3


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, None, True])
def test_predict_refuses_a_batch_size_that_is_not_a_count(tiny_mnist: Path, tmp_path: Path, batch_size) -> None:
    """-1 returned no predictions at all, 0 and None raised from deep inside."""
    run = nnx.train({"training": {"epochs": 1, "validation": 100}}, {"data.dir": str(tiny_mnist)}, out=tmp_path / "r")
    model = nnx.load(run.path)
    with pytest.raises(NnxError, match=r"^batch_size: expected a whole number >= 1, got "):
        model.predict(np.zeros((3, 784), np.uint8), batch_size=batch_size)
    assert len(model.predict(np.zeros((3, 784), np.uint8), batch_size=np.int64(2)).classes) == 3
