"""Model files: round trip, and every kind of bad file is a clear error, never unpickled."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nnx.backend import get_backend
from nnx.errors import ModelFileError
from nnx.io import HEADER_KEY, load_model, read_header, save_model
from nnx.nn import build_model, mlp_spec
from nnx.preprocess import Preprocess


@pytest.fixture
def saved(tmp_path: Path):
    backend = get_backend("cpu", "float32")
    model = build_model(mlp_spec([784, 16, 10]), backend, np.random.default_rng(0))
    path = tmp_path / "model.npz"
    save_model(path, model, Preprocess.named("standard"), metrics={"test_accuracy": 0.5})
    return model, path


def test_round_trip(saved, backend) -> None:
    model, path = saved
    loaded = load_model(path, backend)
    assert loaded.preprocess == Preprocess.named("standard")
    assert loaded.header["metrics"]["test_accuracy"] == 0.5
    assert loaded.header["architecture"] == model.spec()
    for (name, a, _), (_, b, _) in zip(model.parameters(), loaded.model.parameters(), strict=True):
        assert np.array_equal(backend.to_numpy(b), a.astype(backend.dtype)), name
    x = np.random.default_rng(1).random((3, 784))
    expected = model.forward(x.astype(np.float32))
    got = backend.to_numpy(loaded.model.forward(backend.asarray(x)))
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_saving_does_not_touch_the_model(tmp_path: Path) -> None:
    backend = get_backend("cpu", "float64")
    model = build_model(mlp_spec([4, 3, 2]), backend, np.random.default_rng(0))
    before = {name: (p, p.copy()) for name, p, _ in model.parameters()}
    save_model(tmp_path / "m.npz", model, Preprocess())
    for name, p, _ in model.parameters():
        assert p is before[name][0] and np.array_equal(p, before[name][1])
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temp file left


def test_truncated_file(saved, tmp_path: Path) -> None:
    _, path = saved
    cut = tmp_path / "cut.npz"
    cut.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="not a readable nnx model file"):
        load_model(cut, get_backend("cpu"))


def rewrite(source: Path, target: Path, change) -> Path:
    """Copy a model file, letting `change(header, arrays)` edit it on the way."""
    with np.load(source) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(arrays[HEADER_KEY].tobytes())
    change(header, arrays)
    arrays[HEADER_KEY] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(target, **arrays)
    return target


def test_tampered_array(saved, tmp_path: Path) -> None:
    def add_one(header, arrays) -> None:
        arrays["0.W"] = arrays["0.W"] + 1

    bad = rewrite(saved[1], tmp_path / "tampered.npz", add_one)
    with pytest.raises(ModelFileError, match="0.W does not match its checksum"):
        load_model(bad, get_backend("cpu"))


def test_newer_format_version(saved, tmp_path: Path) -> None:
    future = rewrite(saved[1], tmp_path / "future.npz", lambda header, arrays: header.update(format_version=99))
    with pytest.raises(ModelFileError, match="format version 99"):
        read_header(future)


def test_unknown_layer_type(saved, tmp_path: Path) -> None:
    def quantum(header, arrays) -> None:
        header["architecture"][1]["type"] = "quantum"

    odd = rewrite(saved[1], tmp_path / "odd.npz", quantum)
    with pytest.raises(ModelFileError, match="unknown layer type 'quantum'"):
        load_model(odd, get_backend("cpu"))


def test_foreign_files_are_never_unpickled(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    pickled = tmp_path / "evil.npz"
    pickled.write_bytes(pickle.dumps(Boom()))
    object_npz = tmp_path / "objects.npz"
    np.savez(object_npz, a=np.array([Boom()], dtype=object))
    plain_npz = tmp_path / "plain.npz"
    np.savez(plain_npz, a=np.zeros(3))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path, message in [
        (pickled, "not a readable nnx model file"),
        (object_npz, "not an nnx model file \\(no __header__ entry\\)"),  # refused before any array is read
        (plain_npz, "no __header__ entry"),
        (text, "not a readable nnx model file"),
        (tmp_path / "absent.npz", "no such model file"),
    ]:
        with pytest.raises(ModelFileError, match=message):
            load_model(path, get_backend("cpu"))
    assert not (tmp_path / "pwned").exists()


def test_zip_crc_corruption(saved, tmp_path: Path) -> None:
    _, path = saved
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("0.W.npy")
    data[info.header_offset + 200] ^= 0xFF
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError):
        load_model(bad, get_backend("cpu"))
