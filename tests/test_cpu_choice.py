"""The CPU path of a run is chosen by measurement on the machine, remembered, and kept on resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnx
from nnx import cpu_choice
from nnx.cpu_choice import MIN_SAVING_SECONDS, Cache, choose, decide
from nnx.errors import BackendError

CANDIDATES = ["numpy", "compiled", "tiles"]


def runners(per_step: dict[str, float], calls: list[str] | None = None):
    """make_runner for choose(): each path 'trains' at a fixed speed; what is built is noted."""

    def make_runner(path: str):
        if path not in per_step:
            raise AssertionError(f"{path} was measured, and must not have been")
        if calls is not None:
            calls.append(path)
        return lambda k: per_step[path]

    return make_runner


@pytest.fixture(autouse=True)
def auto(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NNX_CPU_PATH", "NNX_NUMBA", "NNX_PRODUCTS"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("figures", "steps", "path"),
    [
        # Numba saves 40% of a long run: the fastest of its paths
        ({"numpy": 1e-3, "compiled": 0.7e-3, "tiles": 0.6e-3}, 100_000, "tiles"),
        # the tiles within MIN_TILES_FRACTION of BLAS's products: BLAS's
        ({"numpy": 1e-3, "compiled": 0.7e-3, "tiles": 0.69e-3}, 100_000, "compiled"),
        # slower tiles are never taken
        ({"numpy": 1e-3, "compiled": 0.7e-3, "tiles": 0.9e-3}, 100_000, "compiled"),
        # a saving under MIN_SAVING_SECONDS: NumPy's chains, without Numba's memory
        ({"numpy": 1e-3, "compiled": 0.7e-3, "tiles": 0.6e-3}, 4_000, "numpy"),
        # a long run that Numba speeds up by under 5% a step: NumPy
        ({"numpy": 1e-3, "compiled": 0.97e-3}, 10_000_000, "numpy"),
        # Numba slower: NumPy
        ({"numpy": 1e-3, "compiled": 1.2e-3, "tiles": 1.1e-3}, 10_000_000, "numpy"),
    ],
)
def test_the_path_with_the_shortest_projected_run_wins_by_the_margins(figures, steps, path) -> None:
    chosen, reason = decide(figures, steps)
    assert chosen == path
    assert "numpy" in reason and "ms" in reason  # the figures it was chosen from


def test_a_long_run_is_measured_once_then_read_from_the_cache(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "paths.json")
    figures = {"numpy": 1e-3, "compiled": 0.8e-3, "tiles": 0.5e-3}
    calls: list[str] = []
    first = choose("net", CANDIDATES, 100_000, 2, runners(figures, calls), cache)
    assert (first.path, first.source) == ("tiles", "measured") and first.step_seconds == figures
    assert set(calls) == set(CANDIDATES)
    saved = json.loads(cache.path.read_text())
    (entry,) = saved["hosts"].values()
    assert entry["host"]["threads"] == 2 and entry["host"]["cpu"] and "blas" in entry["host"]
    assert entry["networks"]["net"]["step_seconds"] == figures
    # the next run of this network builds nothing to measure; a shorter one decides otherwise
    again = choose("net", CANDIDATES, 100_000, 2, runners({}), cache)
    assert (again.path, again.source) == ("tiles", "cache")
    short = choose("net", CANDIDATES, 1_000, 2, runners({}), cache)
    assert short.path == "numpy"
    # another thread count is another machine, as far as the figures go
    other = choose("net", CANDIDATES, 100_000, 1, runners(figures), cache)
    assert other.source == "measured"


def test_a_run_too_short_to_gain_never_builds_a_numba_path(tmp_path: Path) -> None:
    steps = int(MIN_SAVING_SECONDS / 1e-3)  # the whole run on NumPy lasts MIN_SAVING_SECONDS
    calls: list[str] = []
    choice = choose("net", CANDIDATES, steps, 2, runners({"numpy": 1e-3}, calls), Cache(tmp_path / "c.json"))
    assert (choice.path, choice.source) == ("numpy", "short run") and calls == ["numpy"]
    # the first look is kept: a later run of the network needs no measuring to know it is short
    again = choose("net", CANDIDATES, steps, 2, runners({}), Cache(tmp_path / "c.json"))
    assert (again.path, again.source, again.step_seconds) == ("numpy", "short run", {"numpy": 1e-3})
    # and a long one measures the rest
    calls.clear()
    long = choose("net", CANDIDATES, 100 * steps, 2, runners({"numpy": 1e-3, "compiled": 5e-4, "tiles": 5e-4}, calls),
                  Cache(tmp_path / "c.json"))  # fmt: skip
    assert (long.path, long.source) == ("compiled", "measured") and set(calls) == set(CANDIDATES)


def test_nnx_cpu_path_sets_the_path_and_a_typo_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c.json")
    monkeypatch.setenv("NNX_CPU_PATH", "compiled")
    choice = choose("net", CANDIDATES, 10, 2, runners({}), cache)
    assert (choice.path, choice.source) == ("compiled", "NNX_CPU_PATH")
    monkeypatch.setenv("NNX_CPU_PATH", "tiles")  # where it cannot run: the nearest that can
    assert choose("net", ["numpy", "compiled"], 10, 2, runners({}), cache).path == "compiled"
    monkeypatch.setenv("NNX_CPU_PATH", "tilse")
    with pytest.raises(BackendError, match=r"NNX_CPU_PATH=tilse: not a CPU path \(did you mean tiles\?\)"):
        choose("net", CANDIDATES, 10, 2, runners({}), cache)


def test_numba_turned_off_or_missing_leaves_numpy_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NNX_NUMBA", "0")
    assert cpu_choice.cpu_candidates("float32", False) == ["numpy"]
    monkeypatch.delenv("NNX_NUMBA")
    monkeypatch.setattr(cpu_choice, "numba_installed", lambda: False)
    assert cpu_choice.cpu_candidates("float32", False) == ["numpy"]


def test_tiles_are_a_candidate_only_for_float32_networks_without_convolutions(monkeypatch) -> None:
    monkeypatch.setattr(cpu_choice, "numba_installed", lambda: True)
    monkeypatch.setattr(cpu_choice, "_has_avx512", lambda: True)
    assert cpu_choice.cpu_candidates("float32", False) == CANDIDATES
    assert cpu_choice.cpu_candidates("float64", False) == ["numpy", "compiled"]
    assert cpu_choice.cpu_candidates("float32", True) == ["numpy", "compiled"]
    monkeypatch.setenv("NNX_PRODUCTS", "blas")
    assert cpu_choice.cpu_candidates("float32", False) == ["numpy", "compiled"]
    monkeypatch.setattr(cpu_choice, "_has_avx512", lambda: False)
    monkeypatch.delenv("NNX_PRODUCTS")
    assert cpu_choice.cpu_candidates("float32", False) == ["numpy", "compiled"]


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", b'{"version": 1, "hosts": []}',
                                     b'{"version": 99, "hosts": {}}'])  # fmt: skip
def test_a_broken_cache_file_is_measured_again_and_rewritten(tmp_path: Path, content: bytes) -> None:
    cache = Cache(tmp_path / "c.json")
    cache.path.write_bytes(content)
    choice = choose("net", CANDIDATES, 100_000, 2, runners({"numpy": 1e-3, "compiled": 0.5e-3, "tiles": 0.6e-3}), cache)
    assert (choice.path, choice.source) == ("compiled", "measured")
    assert choose("net", CANDIDATES, 100_000, 2, runners({}), cache).source == "cache"


def test_cached_figures_that_are_not_numbers_are_measured_again(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c.json")
    figures = {"numpy": 1e-3, "compiled": 0.5e-3, "tiles": 0.6e-3}
    choose("net", CANDIDATES, 100_000, 2, runners(figures), cache)
    data = json.loads(cache.path.read_text())
    (entry,) = data["hosts"].values()
    entry["networks"]["net"]["step_seconds"]["tiles"] = "fast"
    cache.path.write_text(json.dumps(data))
    assert choose("net", CANDIDATES, 100_000, 2, runners(figures), cache).source == "measured"


def test_a_cache_that_cannot_be_written_costs_a_measurement_not_the_run(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    cache = Cache(tmp_path / "file" / "c.json")
    figures = {"numpy": 1e-3, "compiled": 0.5e-3}
    assert choose("net", ["numpy", "compiled"], 100_000, 2, runners(figures), cache).path == "compiled"
    assert choose("net", ["numpy", "compiled"], 100_000, 2, runners(figures), cache).source == "measured"


def test_measure_alternates_and_keeps_each_candidates_best_round() -> None:
    order: list[str] = []
    times = {"numpy": iter([9.0, 9.0, 3e-3, 1e-3, 2e-3, 5e-3, 4e-3]), "compiled": iter([9.0, 9.0, 1e-3] * 3)}

    def make_runner(path: str):
        def run(k: int) -> float:
            order.append(path)
            return next(times[path], 1e-3)

        return run

    figures = cpu_choice.measure(["numpy", "compiled"], make_runner)
    assert figures == {"numpy": 1e-3, "compiled": 1e-3}
    assert order[4:8] == ["numpy", "compiled", "numpy", "compiled"]  # after two warm-up calls each


def test_a_short_training_run_stays_on_numpy_and_never_imports_numba(tiny_mnist: Path, tmp_path: Path) -> None:
    """The default network's path for a short run: NumPy's chains, with Numba's ~100 MB never
    loaded (a process of its own: this one has imported Numba for other tests)."""
    script = (
        "import sys, nnx\n"
        f"run = nnx.train('mnist_mlp', {{'data.dir': {str(tiny_mnist)!r}, 'training.epochs': 2,"
        " 'training.validation': 100}, "
        f"out={str(tmp_path / 'run')!r})\n"
        "print(run.summary['cpu_path']['path'], run.summary['cpu_path']['source'], 'numba' in sys.modules)\n"
    )
    # a machine of its own: the session's cache may hold this network's figures from a longer run
    env = {**os.environ, "NNX_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["numpy", "short", "run", "False"]


def test_the_path_is_recorded_and_a_resume_keeps_it(tiny_mnist: Path, tmp_path: Path, monkeypatch) -> None:
    """A run stopped on one path resumes on it, whatever the measurements would say now: the
    products' last bits differ between paths, and a resume continues bit for bit."""
    from nnx.trainer import Callback

    monkeypatch.setenv("NNX_CPU_PATH", "tiles")
    expected = "tiles" if "tiles" in cpu_choice.cpu_candidates("float32", False) else "compiled"
    if not cpu_choice.numba_installed():
        expected = "numpy"

    class StopAfterOneEpoch(Callback):
        def bind(self, trainer) -> None:
            self.trainer = trainer

        def on_epoch_end(self, metrics) -> None:
            self.trainer.request_stop()

    overrides = {"data.dir": str(tiny_mnist), "training.epochs": 3, "training.validation": 100}
    stopped = nnx.train("mnist_mlp", overrides, out=tmp_path / "run", callbacks=[StopAfterOneEpoch()])
    assert stopped.interrupted and stopped.summary["cpu_path"]["path"] == expected
    monkeypatch.delenv("NNX_CPU_PATH")
    resumed = nnx.train(resume=tmp_path / "run", callbacks=[StopAfterOneEpoch()])
    assert resumed.interrupted and resumed.summary["cpu_path"]["path"] == expected
    assert resumed.summary["cpu_path"]["source"] == "checkpoint"
    monkeypatch.setenv("NNX_CPU_PATH", "numpy")  # an explicit setting still wins on resume
    finished = nnx.train(resume=tmp_path / "run")
    assert not finished.interrupted and finished.summary["cpu_path"]["path"] == "numpy"
    assert np.isfinite(finished.summary["test_loss"])


def figures(numpy: float, compiled: float, numpy_winograd: float, compiled_winograd: float) -> dict[str, float]:
    """Seconds per step (in units of 10 ms) of a CNN's four candidates."""
    steps = {"numpy": numpy, "compiled": compiled, "numpy+winograd": numpy_winograd,
             "compiled+winograd": compiled_winograd}  # fmt: skip
    return {path: 1e-2 * s for path, s in steps.items()}


@pytest.mark.parametrize(
    ("figures", "path"),
    [
        # Winograd faster on both: the compiled one, which saves enough
        (figures(1.0, 0.8, 0.9, 0.7), "compiled+winograd"),
        # Winograd slower (AVX-512 products): im2col
        (figures(1.0, 0.8, 1.1, 0.9), "compiled"),
        # Numba gains too little, Winograd pays on NumPy's chains: NumPy by Winograd
        (figures(1.0, 0.99, 0.8, 0.79), "numpy+winograd"),
        # within the margin: im2col, the reference's algorithm
        ({"numpy": 1e-2, "numpy+winograd": 0.99e-2}, "numpy"),
    ],
)
def test_winograd_is_a_measured_choice_too(figures, path) -> None:
    assert decide(figures, 100_000)[0] == path


def test_networks_with_candidate_convolutions_measure_both_algorithms(monkeypatch) -> None:
    monkeypatch.setattr(cpu_choice, "numba_installed", lambda: True)
    assert cpu_choice.cpu_candidates("float32", True, winograd=True) == [
        "numpy", "compiled", "numpy+winograd", "compiled+winograd"
    ]  # fmt: skip
    monkeypatch.setenv("NNX_NUMBA", "0")
    assert cpu_choice.cpu_candidates("float32", True, winograd=True) == ["numpy", "numpy+winograd"]


@pytest.mark.parametrize(
    ("forced", "candidates", "path"),
    [
        ("compiled+winograd", ["numpy", "compiled", "tiles"], "compiled"),  # an MLP: no convolutions to transform
        ("tiles", ["numpy", "compiled", "numpy+winograd", "compiled+winograd"], "compiled"),  # a CNN
        ("numpy+winograd", ["numpy", "numpy+winograd"], "numpy+winograd"),
        ("compiled", ["numpy"], "numpy"),  # no Numba
    ],
)
def test_a_forced_path_that_cannot_run_here_takes_the_nearest(monkeypatch, forced, candidates, path) -> None:
    monkeypatch.setenv("NNX_CPU_PATH", forced)
    assert choose("net", candidates, 10, 2, runners({})).path == path


def test_the_cnn_s_path_is_measured_with_its_winograd_candidates(tiny_mnist: Path, tmp_path: Path, monkeypatch) -> None:
    """A network with a wide 3x3 convolution: its run measures both algorithms (long enough a run),
    and the ops of the run take the chosen one."""
    measured: list[str] = []

    def measure(candidates, make_runner):
        measured.extend(candidates)
        return {path: (0.5e-3 if path.endswith("+winograd") else 1e-3) for path in candidates}

    monkeypatch.setattr(cpu_choice, "measure", measure)
    monkeypatch.setattr(cpu_choice, "MIN_SAVING_SECONDS", 0.0)  # any run is long enough here
    monkeypatch.setenv("NNX_CACHE_DIR", str(tmp_path / "cache"))  # these made-up figures stay here
    conv = {"kernel": 3, "padding": 1}
    layers = [{"conv2d": {"out": 32, **conv}}, "relu", {"conv2d": {"out": 64, **conv}}, "relu",
              {"maxpool2d": {"size": 4}}, "flatten", {"linear": {"out": 10}}]  # fmt: skip
    run = nnx.train(
        {"name": "wide", "model": {"layers": layers}, "training": {"epochs": 1, "validation": 100}},
        {"data.dir": str(tiny_mnist)},
        out=tmp_path / "run",
    )
    assert "numpy+winograd" in measured and run.summary["cpu_path"]["path"].endswith("+winograd")
    first, second = [layer for layer in run.model.layers if layer.kind == "conv2d"]
    assert run.backend.ops.conv_by_winograd(second) and not run.backend.ops.conv_by_winograd(first)
