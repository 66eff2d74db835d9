"""Every reader of what a user (or a stranger) hands nnx, fed arbitrary bytes and structures with
Hypothesis: the result is data or an nnx error naming the problem, never another exception, and
never an allocation the input merely claims."""

from __future__ import annotations

import gzip
import io
import json
import struct
import tracemalloc
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from nnx.backend import get_backend
from nnx.checkpoint import load_checkpoint, save_checkpoint
from nnx.config import load_config
from nnx.data.csvfile import read_csv
from nnx.data.idx import read_idx
from nnx.errors import DataError, NnxError
from nnx.io import load_model, save_model
from nnx.nn import build_model, mlp_spec
from nnx.optim import SGD
from nnx.preprocess import Preprocess
from nnx.runs import read_metrics
from nnx.trainer import TrainState

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MEMORY_GROWTH_LIMIT_MB = 200  # what one hostile file may cost at most


@contextmanager
def allocations_peak_mb() -> Iterator[list[float]]:
    """The most memory Python and NumPy held at once while the block ran, beyond what they held on
    entry (tracemalloc, which NumPy reports its arrays to: an array allocated counts whether or not
    its pages were touched). Not the process's ru_maxrss: that is a high-water mark, so after an
    earlier test went higher any growth reads as zero, and untouched zeros never count."""
    tracemalloc.start()
    held = tracemalloc.get_traced_memory()[0]
    peak = [0.0]
    try:
        yield peak
    finally:
        peak[0] = (tracemalloc.get_traced_memory()[1] - held) / 2**20
        tracemalloc.stop()


def only_nnx_errors(read, *args) -> None:
    """Call read(*args): data or NnxError; anything else fails the test. Memory stays bounded."""
    with allocations_peak_mb() as peak:
        try:
            read(*args)
        except NnxError:
            pass
    assert peak[0] < MEMORY_GROWTH_LIMIT_MB


def idx_header(dims: list[int], dtype_code: int = 8) -> bytes:
    return struct.pack(">HBB", 0, dtype_code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


@SETTINGS
@given(data=st.binary(max_size=2000), gz=st.booleans())
def test_idx_reader_on_arbitrary_bytes(tmp_path: Path, data: bytes, gz: bool) -> None:
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if gz else data)
    only_nnx_errors(read_idx, path, 3)


@SETTINGS
@given(
    dims=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=3),
    body=st.binary(max_size=500),
    gz=st.booleans(),
)
# Found by Hypothesis: no data at all, yet a shape NumPy refuses to make (raised ValueError).
@example(dims=[0, 3_036_988_439, 3_037_012_561], body=b"", gz=False)
@example(dims=[0, 3_036_988_439, 3_037_012_561], body=b"", gz=True)
def test_idx_headers_claiming_gigabytes_cost_nothing(tmp_path: Path, dims: list[int], body: bytes, gz: bool) -> None:
    path = tmp_path / "claims-idx-ubyte"
    content = idx_header(dims) + body
    path.write_bytes(gzip.compress(content) if gz else content)
    only_nnx_errors(read_idx, path, len(dims))


@SETTINGS
@given(text=st.text(max_size=3000))
def test_csv_reader_on_arbitrary_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "x.csv"
    path.write_text(text, encoding="utf-8")
    only_nnx_errors(read_csv, path)


def test_csv_characters_outside_numbers_are_named_before_parsing(tmp_path: Path) -> None:
    """NumPy's CSV tokenizer has crashed the process on arbitrary Unicode (this module's Hypothesis
    test found it): such text must be refused before it gets there."""
    path = tmp_path / "x.csv"
    path.write_text("label,p1\n5," + ",".join(["0"] * 784) + "\n3,\U000e0924<\x83\U0010833f\u00e9\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"x.csv: data row 2 has '\\U000e0924', which is not part of a number"):
        read_csv(path)


@SETTINGS
@given(data=st.binary(max_size=3000))
def test_config_reader_on_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    only_nnx_errors(load_config, str(path))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=30,
)


@SETTINGS
@given(tree=st.dictionaries(st.sampled_from(["name", "model", "optimizer", "training", "data", "bogus"]), json_values))
def test_config_reader_on_arbitrary_structures(tmp_path: Path, tree: dict) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(tree))  # JSON is YAML
    only_nnx_errors(load_config, str(path))


METRIC_KEYS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
# Mostly numbers (as nnx writes them, so that whole lines pass and reach the plot), now and then anything.
metric_values = st.integers(-2, 3) | st.floats() | st.none() | st.integers() | json_values


@SETTINGS
@given(
    lines=st.lists(
        st.fixed_dictionaries({key: metric_values for key in METRIC_KEYS}) | json_values, min_size=1, max_size=3
    )
)
@example(lines=[{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.9, "val_loss": None, "val_accuracy": None}])
@example(
    lines=[dict.fromkeys(METRIC_KEYS, 1), {**dict.fromkeys(METRIC_KEYS, 2), "val_loss": None, "val_accuracy": None}]
)
@example(lines=[{**dict.fromkeys(METRIC_KEYS, 1), "train_loss": 10**400}])
@example(lines=[{**dict.fromkeys(METRIC_KEYS, 1), "epoch": float("inf")}])
def test_metrics_lines_of_any_structure_are_read_or_named_never_plotted_wrong(tmp_path: Path, lines: list) -> None:
    """A run's metrics.jsonl, as `nnx plot` and `nnx runs compare --plot` read it: what
    read_metrics accepts, the curves plot."""
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    try:
        history = read_metrics(path)
    except NnxError:
        return
    pytest.importorskip("matplotlib")
    from nnx.viz.plots import plot_curves

    plot_curves({"run": history}, tmp_path / "curves.png")


def model_file(path: Path) -> Path:
    model = build_model(mlp_spec([784, 8, 10]), get_backend("cpu"), np.random.default_rng(0))
    save_model(path, model, Preprocess.named("standard"))
    return path


def rewrite(
    path: Path, header: object | None = None, arrays: dict | None = None, raw_header: bytes | None = None
) -> None:
    """The model file with its JSON header and/or arrays replaced."""
    with np.load(path, allow_pickle=False) as npz:
        content = {k: npz[k] for k in npz.files}
    if raw_header is not None:
        content["__header__"] = np.frombuffer(raw_header, dtype=np.uint8)
    elif header is not None:
        content["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    content.update(arrays or {})
    buffer = io.BytesIO()
    np.savez(buffer, **content)
    path.write_bytes(buffer.getvalue())


@SETTINGS
@given(header=json_values)
def test_model_headers_of_any_structure(tmp_path: Path, header: object) -> None:
    path = model_file(tmp_path / "m.npz")
    rewrite(path, header=header)
    only_nnx_errors(load_model, path, get_backend("cpu"))


@SETTINGS
@given(key=st.sampled_from(["architecture", "arrays", "preprocessing", "dtype", "format_version"]), value=json_values)
def test_model_headers_with_one_field_changed(tmp_path: Path, key: str, value: object) -> None:
    path = model_file(tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(npz["__header__"].tobytes())
    header[key] = value
    rewrite(path, header=header)
    only_nnx_errors(load_model, path, get_backend("cpu"))


@SETTINGS
@given(data=st.binary(max_size=3000))
def test_model_reader_on_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "m.npz"
    path.write_bytes(data)
    only_nnx_errors(load_model, path, get_backend("cpu"))


NOT_A_MODEL = "{fifo}: not a regular file; give a model file or a run directory"


@pytest.mark.parametrize(
    "command,message",
    [
        (["evaluate", "{fifo}"], NOT_A_MODEL),
        (["info", "{fifo}"], NOT_A_MODEL),
        (["export", "{fifo}", "-o", "{tmp}/m.onnx"], NOT_A_MODEL),
        (["predict", "{model}", "{fifo}"], "{fifo}: not an image file (a folder, FIFO or device)"),
    ],
)
def test_a_fifo_given_as_a_model_or_an_image_is_refused_not_waited_on(tmp_path: Path, command, message) -> None:
    """A named pipe (or /dev/zero) opened for reading blocks until a writer comes, forever here:
    `nnx evaluate`, `info`, `export` and `predict` hung on one. In a subprocess, so that a
    regression fails on the timeout instead of hanging the tests."""
    import os
    import subprocess
    import sys

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    names = {"fifo": str(fifo), "tmp": str(tmp_path), "model": str(model_file(tmp_path / "m.npz"))}
    args = [part.format(**names) for part in command]
    result = subprocess.run([sys.executable, "-m", "nnx", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr == f"error: {message.format(**names)}\n"


def test_a_header_claiming_a_huge_layer_is_refused_before_allocating(tmp_path: Path) -> None:
    path = model_file(tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(npz["__header__"].tobytes())
    header["architecture"][0]["out"] = 10**9
    rewrite(path, header=header)
    with allocations_peak_mb() as peak, pytest.raises(NnxError):
        load_model(path, get_backend("cpu"))
    assert peak[0] < 50


def test_a_network_too_large_in_total_is_refused_before_its_first_layer_allocates(monkeypatch) -> None:
    """Each layer fits, the network does not (`--set model.hidden=[200000,200000]`): the whole
    network's parameters are counted first. Before, the first layer's 157M weights were drawn
    (2.5 GB, 7 s) and only the second was refused."""
    backend = get_backend("cpu", "float32")
    monkeypatch.setattr(type(backend), "memory_bytes", lambda self: 400 << 20)  # parameters: 100 MiB
    spec = mlp_spec([784, 20_000, 20_000, 10])  # 15.7M parameters (63 MB) fit; with 400M more, not
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"layer 2 \(linear\): the network reaches 415,\d{3},\d{3} parameters"):
            build_model(spec, backend, np.random.default_rng(0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak:,} bytes allocated before the refusal"


def test_an_array_whose_npy_header_disagrees_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = model_file(tmp_path / "m.npz")
    rewrite(path, arrays={"0.W": np.zeros((784, 9), dtype=np.float32)})
    with pytest.raises(NnxError, match=r"array 0.W is float32 \[784, 9\], but the header lists \[784, 8\]"):
        load_model(path, get_backend("cpu"))


def checkpoint_file(path: Path):
    backend = get_backend("cpu")
    model = build_model(mlp_spec([784, 8, 10]), backend, np.random.default_rng(0))
    optimizer = SGD(model.flat_parameters(), 0.1, 0.9, ops=backend.ops)
    save_checkpoint(path, model, optimizer, TrainState(epoch=2))
    return model, optimizer


def test_a_tampered_checkpoint_is_refused_not_loaded_into_the_weights(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.npz"
    model, optimizer = checkpoint_file(path)
    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    weights = np.load(io.BytesIO(members["model/0.W.npy"]))
    weights[0, 0] += 1.0
    buffer = io.BytesIO()
    np.save(buffer, weights)
    members["model/0.W.npy"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    before = model.state()["0.W"].copy()
    with pytest.raises(NnxError, match="array model/0.W does not match its checksum"):
        load_checkpoint(path, model, optimizer)
    assert np.array_equal(model.state()["0.W"], before)


@SETTINGS
@given(data=st.binary(max_size=3000))
def test_checkpoint_reader_on_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "checkpoint.npz"
    model, optimizer = checkpoint_file(tmp_path / "good.npz")
    path.write_bytes(data)
    only_nnx_errors(load_checkpoint, path, model, optimizer)


STATE_KEYS = list(TrainState().to_dict()) + ["bogus"]
good_entry = {"epoch": 1, "train_loss": 0.3, "train_accuracy": 0.9, "val_loss": None, "val_accuracy": None,
              "seconds": 1.0, "lr": 0.1}  # fmt: skip
history_entries = st.fixed_dictionaries({k: metric_values for k in good_entry}) | json_values


@SETTINGS
@given(
    key=st.sampled_from([*STATE_KEYS, "state", "optimizer_steps"]),
    value=metric_values | st.lists(history_entries, max_size=3) | st.integers(-(10**20), 10**20),
)
def test_checkpoint_training_states_with_one_field_changed(tmp_path: Path, key: str, value: object) -> None:
    """The training state a resume continues from (epoch, batch position, accumulators, history)
    is checked like the rest of the file: a state or a value nnx did not write is one NnxError."""
    path = tmp_path / "checkpoint.npz"
    model, optimizer = checkpoint_file(path)
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(npz["__header__"].tobytes())
    if key in ("state", "optimizer_steps"):
        header[key] = value
    else:
        header["state"] = {**header["state"], "history": [good_entry], key: value}
    rewrite(path, header=header)
    only_nnx_errors(load_checkpoint, path, model, optimizer)


CNN_SPEC = [
    {"type": "conv2d", "out": 2, "kernel": 3, "stride": 1, "padding": 1}, {"type": "batchnorm"},
    {"type": "leaky_relu", "alpha": 0.01}, {"type": "maxpool2d", "size": 2}, {"type": "dropout", "p": 0.25},
    {"type": "flatten"}, {"type": "linear", "out": 10},
]  # fmt: skip
odd_numbers = st.sampled_from([0, -1, 8.5, "8", True, None, 1e300, 2**40, float("nan"), float("inf"), [8], 1.0])


# Every (layer, key) of CNN_SPEC's saved architecture, "in" and "features" included.
LAYER_KEYS = [
    (i, key)
    for i, item in enumerate(build_model(CNN_SPEC, get_backend("cpu"), np.random.default_rng(0)).spec())
    for key in item
    if key not in ("type", "init")
]


@SETTINGS
@given(place=st.sampled_from(LAYER_KEYS), value=odd_numbers)
def test_model_headers_with_an_odd_number_in_a_layer(tmp_path: Path, place: tuple, value: object) -> None:
    """A model file's layer sizes and constants are checked as a config's are: a zero, a fraction,
    text, a boolean, NaN or an absurd size is one error naming the layer, never a traceback (a
    linear layer of 0 inputs divided by zero) and never a network built from it (8.5 read as 8)."""
    model = build_model(CNN_SPEC, get_backend("cpu"), np.random.default_rng(0))
    path = tmp_path / "m.npz"
    save_model(path, model, Preprocess.named("standard"))
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(npz["__header__"].tobytes())
    layer, key = place
    header["architecture"][layer][key] = value
    rewrite(path, header=header)
    try:
        loaded = load_model(path, get_backend("cpu"))
    except NnxError:
        return
    assert loaded.model.spec() == header["architecture"] or value is None, "built from a value it changed"
