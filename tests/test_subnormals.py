"""No optimizer lets its state decay into subnormal floats, on any of its implementations.

A unit whose gradient is (almost) always zero has its momentum decay geometrically (v <- mu v):
below float32's smallest normal number (1.18e-38) after about 830 steps at mu = 0.9. Some CPUs
take a microcode assist on every subnormal operand, which made every later step several times
slower; the updates flush such values to zero. These tests check the numbers, not the time, so
they hold on any host.
"""

from __future__ import annotations

import emulated_cupy
import numpy as np
import pytest

from nnx.cpu_ops import CpuOps
from nnx.ops import Ops, flush_subnormals
from nnx.optim import SGD, Adam, AdamW, RMSprop

STEPS = 1200  # 0.9^1200 ~ 1e-55: far into the subnormal range (and past it, to zero) unflushed


def subnormals(a: np.ndarray) -> int:
    return int(np.count_nonzero((a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny)))


def implementations() -> list:
    return [
        pytest.param(lambda dtype: Ops(np), id="reference"),
        pytest.param(lambda dtype: CpuOps(compiled=True), id="cpu-compiled"),
        pytest.param(lambda dtype: CpuOps(compiled=False), id="cpu-numpy"),
        pytest.param(lambda dtype: emulated_cupy.backend(dtype).ops, id="gpu-emulated"),
    ]


OPTIMIZERS = [
    pytest.param(lambda ps, ops: SGD(ps, 0.1, momentum=0.9, ops=ops), id="sgd-momentum"),
    pytest.param(lambda ps, ops: SGD(ps, 0.1, momentum=0.9, nesterov=True, ops=ops), id="nesterov"),
    pytest.param(lambda ps, ops: Adam(ps, 0.01, betas=(0.9, 0.9), ops=ops), id="adam"),
    pytest.param(lambda ps, ops: AdamW(ps, 0.01, betas=(0.9, 0.9), weight_decay=0.01, ops=ops), id="adamw"),
    pytest.param(lambda ps, ops: RMSprop(ps, 0.01, rho=0.9, ops=ops), id="rmsprop"),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("make_optimizer", OPTIMIZERS)
@pytest.mark.parametrize("make_ops", implementations())
def test_state_that_decays_reaches_zero_not_a_subnormal(make_ops, make_optimizer, dtype: str) -> None:
    """One nonzero gradient, then zeros: every state array decays geometrically from there. At each
    step none of it may be subnormal, and the parameters' path is the unflushed one's (what was
    flushed was below anything a parameter of this size can feel)."""
    ops = make_ops(dtype)
    n = 64
    p = np.linspace(-1, 1, n).astype(dtype)
    g = np.linspace(-3, 3, n).astype(dtype)  # magnitudes 0 .. 3, both signs
    optimizer = make_optimizer([("w", p, g)], ops)
    reference_p = p.copy()
    unflushed = make_optimizer([("w", reference_p, g.copy())], _Unflushed())
    for step in range(STEPS):
        optimizer.step()
        unflushed.step()
        for arrays in optimizer.state.values():
            assert subnormals(arrays["w"]) == 0, f"step {step + 1}: subnormal state"
        if step == 0:
            g[...] = 0
            unflushed.params[0][2][...] = 0
    np.testing.assert_allclose(p, reference_p, rtol=1e-6 if dtype == "float32" else 1e-12)


def test_the_unflushed_updates_do_reach_subnormals() -> None:
    """The case above is one that goes wrong without the flush (so that test can fail)."""
    p, g = np.ones(4, dtype=np.float32), np.ones(4, dtype=np.float32)
    optimizer = SGD([("w", p, g)], 0.1, momentum=0.9, ops=_Unflushed())
    seen = 0
    for _ in range(STEPS):
        optimizer.step()
        seen = max(seen, subnormals(optimizer.state["velocity"]["w"]))
        g[...] = 0
    assert seen == 4


def test_flush_keeps_nan_inf_zero_and_normal_numbers() -> None:
    tiny = np.finfo(np.float32).tiny
    a = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, tiny, -tiny, tiny / 2, -tiny / 1e3, 1.0], dtype=np.float32)
    flushed = flush_subnormals(np, a.copy())
    assert np.isnan(flushed[0]) and list(flushed[1:3]) == [np.inf, -np.inf]
    assert list(flushed[3:]) == [0, 0, tiny, -tiny, 0, 0, 1]
    assert list(np.signbit(flushed[3:9])) == [False, True, False, True, False, True]  # x * 0: x's sign


def test_training_with_rarely_active_inputs_keeps_no_subnormal_state(mnist_dir, tmp_path) -> None:
    """The default network on MNIST: pixels near the border are lit in a few images only, so their
    weights' momentum decays for hundreds of steps at a time. Unflushed, thousands of the
    velocities ended subnormal (13,516 of 50,890 after 4 epochs at lr 0.1)."""
    import nnx

    run = nnx.train(
        "mnist_mlp",
        {"data.dir": str(mnist_dir), "optimizer.lr": 0.1, "training.epochs": 3},
        out=tmp_path / "run",
    )
    with np.load(run.path / "checkpoint.npz") as saved:
        velocity = saved["optim/velocity/all"]
        params = [saved[k] for k in saved.files if k.startswith("model/")]
    assert velocity.size == 50_890 and subnormals(velocity) == 0
    assert all(subnormals(p) == 0 for p in params)


class _Unflushed(Ops):
    """The reference updates with their flush taken out: what the state does when nothing stops it."""

    def __init__(self) -> None:
        super().__init__(np)

    def flush_subnormals(self, a):
        return a
