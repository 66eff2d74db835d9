"""Elastic distortions (Simard, Steinkraus & Platt 2003): random displacement fields smoothed by a
Gaussian and scaled, with the affine shift and rotation, sampled bilinearly; keyed like every
other random number, so resume and data-parallel training stay exact."""

from __future__ import annotations

from pathlib import Path

import emulated_cupy
import numpy as np
import pytest

import nnx
import nnx.cpu_ops as cpu_ops
from nnx.augment import ShiftRotate, gaussian_rows
from nnx.backend import Backend, get_backend
from nnx.config import load_config
from nnx.cpu_ops import CpuOps
from nnx.errors import ConfigError
from nnx.ops import Ops


def digits(n: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 (n, 784): a bar of random ink in the middle of each image."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 6:22, 11:17] = rng.integers(1, 256, size=(n, 16, 6))
    return images.reshape(n, 784)


def test_the_smoothing_is_a_normalised_gaussian_over_a_black_border() -> None:
    G = gaussian_rows(4.0)
    assert G.shape == (28, 28) and np.allclose(G, G.T)
    assert abs(G[14].sum() - 1) < 1e-3  # a row far from the edges holds (almost) all of the kernel
    assert G[0].sum() < 0.6  # at the edge, half of it falls on the border
    assert np.argmax(G[10]) == 10 and G[10, 10] > G[10, 12] > G[10, 20]


def test_the_fields_are_smooth_scaled_by_alpha_and_keyed_by_image() -> None:
    backend = get_backend("cpu", cpu_path="numpy")
    small, large = ShiftRotate(backend, 0, 0, 8.0, 4.0), ShiftRotate(backend, 0, 0, 34.0, 4.0)
    dy, dx = large.displacements(200, key=3)
    assert dy.shape == dx.shape == (200, 28, 28)
    assert abs(float(dy.mean())) < 0.2 and 0.3 < float(dy.std()) < 5  # centred, a few pixels
    # smooth: neighbours move together (correlation of a pixel's field with its neighbour's)
    assert np.corrcoef(dy[:, 14, 14], dy[:, 14, 15])[0, 1] > 0.9
    assert np.corrcoef(dy[:, 14, 14], dx[:, 14, 14])[0, 1] < 0.3  # the two directions: independent
    sy, _ = small.displacements(200, key=3)
    assert np.allclose(sy * 34 / 8, dy, rtol=1e-4, atol=1e-5)  # the same fields, scaled
    again, _ = large.displacements(200, key=3)
    other, _ = large.displacements(200, key=4)
    assert np.array_equal(again, dy) and not np.allclose(other, dy)
    shifted, _ = large.displacements(10, key=3, row_offset=5)  # image 5 of the batch on its own
    assert np.allclose(shifted, dy[5:15], atol=1e-5)


def test_without_displacement_or_affine_the_images_come_back() -> None:
    backend = get_backend("cpu", cpu_path="numpy")
    pixels = digits()
    assert np.array_equal(ShiftRotate(backend, 0, 0, 1e-6, 4.0)(pixels, key=1), pixels)


def test_bilinear_sampling_between_pixels_and_black_outside() -> None:
    backend = get_backend("cpu", cpu_path="numpy")
    augment = ShiftRotate(backend, 0, 0, 1.0, 4.0)
    pixels = np.zeros((1, 784), dtype=np.uint8)
    pixels[0, 14 * 28 + 14], pixels[0, 14 * 28 + 15] = 100, 200
    grid = np.mgrid[0:28, 0:28].astype(np.float32)
    sy, sx = grid[0][None].copy(), grid[1][None].copy()
    sx[0, 3, 3], sy[0, 3, 3] = 14.25, 14.0  # a quarter of the way from 100 to 200
    sy[0, 0, 0], sx[0, 0, 0] = -0.5, 0.0  # half outside: half of black and of pixel (0, 0)
    sy[0, 27, 27], sx[0, 27, 27] = 40.0, -9.0  # far outside
    sy[0, 5, 5], sx[0, 5, 5] = 13.5, 14.5  # between four pixels, two of them lit
    out = augment._bilinear(pixels, sy, sx).reshape(28, 28)
    assert out[3, 3] == 125 and out[0, 0] == 0 and out[27, 27] == 0
    assert out[5, 5] == 75  # (100 + 200) / 4
    assert out[14, 14] == 100 and out[14, 15] == 200  # on a pixel: that pixel


@pytest.mark.parametrize("ops", [CpuOps(compiled=False, own_threads=True, threads=2), CpuOps(compiled=False)])
def test_chunks_ranks_and_backends_draw_the_same_distortions(ops, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same images whether computed in one piece (the reference), in small chunks on two
    threads, split between two data-parallel ranks, or on the GPU's kernels (emulated)."""
    monkeypatch.setattr(cpu_ops, "CHUNK_ELEMENTS", 1 << 14)
    pixels = digits(90)
    reference = ShiftRotate(Backend("cpu", np, np.dtype(np.float32), ops=Ops(np)), 2, 10, 34.0, 4.0)
    whole = reference(pixels, key=9, row_offset=7)
    assert np.array_equal(ShiftRotate(Backend("cpu", np, np.dtype(np.float32), ops=ops), 2, 10, 34.0, 4.0)(
        pixels, key=9, row_offset=7), whole)  # fmt: skip
    halves = [reference(pixels[:40], key=9, row_offset=7), reference(pixels[40:], key=9, row_offset=47)]
    assert np.array_equal(np.concatenate(halves), whole)
    gpu = emulated_cupy.backend("float32")
    on_gpu = ShiftRotate(gpu, 2, 10, 34.0, 4.0)(gpu.asarray(pixels), key=9, row_offset=7)
    assert np.abs(gpu.to_numpy(on_gpu).astype(int) - whole).max() <= 1  # rounding of sums may differ


def test_the_config_asks_for_it_within_ranges(tmp_path: Path) -> None:
    config, _ = load_config(None, ["training.augment={enabled: true, elastic: {alpha: 34, sigma: 4}}"])
    assert config.training.augment.elastic.alpha == 34
    defaults, _ = load_config(None, ["training.augment={enabled: true, elastic: {}}"])
    assert (defaults.training.augment.elastic.alpha, defaults.training.augment.elastic.sigma) == (34, 4)
    for bad, message in [
        ("training.augment.elastic={alpha: 34}", "set training.augment.enabled: true too"),
        ("training.augment={enabled: true, elastic: {alpha: -1}}", "greater than 0"),
        ("training.augment={enabled: true, elastic: {sigma: 0}}", "greater than or equal to 0.5"),
        ("training.augment={enabled: true, elastic: {sigam: 3}}", "did you mean sigma?"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
            load_config(None, [bad])


def test_a_run_with_elastic_distortions_resumes_bitwise(tiny_mnist: Path, tmp_path: Path) -> None:
    from nnx.trainer import Callback

    class StopAfterOneEpoch(Callback):
        def bind(self, trainer) -> None:
            self.trainer = trainer

        def on_epoch_end(self, metrics) -> None:
            self.trainer.request_stop()

    overrides = {
        "data.dir": str(tiny_mnist), "training.epochs": 2, "training.validation": 100,
        "training.augment": {"enabled": True, "elastic": {"alpha": 34, "sigma": 4}},
    }  # fmt: skip
    straight = nnx.train("mnist_mlp", overrides, out=tmp_path / "straight")
    stopped = nnx.train("mnist_mlp", overrides, out=tmp_path / "stopped", callbacks=[StopAfterOneEpoch()])
    assert stopped.interrupted
    resumed = nnx.train(resume=tmp_path / "stopped")
    for name, a in straight.model.state().items():
        assert np.array_equal(a, resumed.model.state()[name]), name
    plain = nnx.train("mnist_mlp", {**overrides, "training.augment": {"enabled": True}}, out=tmp_path / "plain")
    assert not np.array_equal(plain.model.state()["0.W"], straight.model.state()["0.W"])  # it did distort
