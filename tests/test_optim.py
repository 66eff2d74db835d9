"""SGD updates against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from nnx.optim import SGD


def one_param(value: float, grad: float):
    p = np.array([value])
    g = np.array([grad])
    return p, g, [("w", p, g)]


def test_plain_sgd() -> None:
    p, g, params = one_param(1.0, 0.5)
    SGD(params, lr=0.1).step()
    assert p[0] == pytest.approx(1.0 - 0.1 * 0.5)


def test_momentum_two_steps() -> None:
    p, g, params = one_param(1.0, 1.0)
    opt = SGD(params, lr=0.1, momentum=0.9)
    opt.step()  # v = 1, p = 1 - 0.1 = 0.9
    assert p[0] == pytest.approx(0.9)
    opt.step()  # v = 0.9 * 1 + 1 = 1.9, p = 0.9 - 0.19 = 0.71
    assert p[0] == pytest.approx(0.71)


def test_nesterov_two_steps() -> None:
    p, g, params = one_param(1.0, 1.0)
    opt = SGD(params, lr=0.1, momentum=0.9, nesterov=True)
    opt.step()  # v = 1, step g + mu v = 1.9, p = 0.81
    assert p[0] == pytest.approx(0.81)
    opt.step()  # v = 1.9, step 1 + 0.9 * 1.9 = 2.71, p = 0.81 - 0.271 = 0.539
    assert p[0] == pytest.approx(0.539)


def test_weight_decay() -> None:
    p, g, params = one_param(2.0, 0.0)
    SGD(params, lr=0.1, weight_decay=0.5).step()  # g = 0 + 0.5 * 2 = 1, p = 2 - 0.1
    assert p[0] == pytest.approx(1.9)
    assert g[0] == 0.0  # the layer's gradient buffer is not modified


def test_update_is_in_place() -> None:
    p, g, params = one_param(1.0, 1.0)
    before = p
    SGD(params, lr=0.1, momentum=0.5).step()
    assert p is before


def test_adam_first_step_moves_by_lr() -> None:
    """After one step m_hat = g and v_hat = g^2, so the update is lr * g / (|g| + eps)."""
    from nnx.optim import Adam

    p = np.array([1.0, -2.0])
    g = np.array([0.5, -3.0])
    Adam([("w", p, g)], lr=0.1).step()
    assert np.allclose(p, [1.0 - 0.1, -2.0 + 0.1], atol=1e-7)


def test_adam_two_steps_by_hand() -> None:
    from nnx.optim import Adam

    p, g = np.array([0.0]), np.array([1.0])
    opt = Adam([("w", p, g)], lr=0.01, betas=(0.9, 0.99), eps=0.0)
    opt.step()
    g[0] = -1.0
    opt.step()
    m = 0.9 * 0.1 + 0.1 * -1.0  # -0.01
    v = 0.99 * 0.01 + 0.01 * 1.0  # 0.0199
    m_hat, v_hat = m / (1 - 0.9**2), v / (1 - 0.99**2)
    assert p[0] == pytest.approx(-0.01 - 0.01 * m_hat / np.sqrt(v_hat))


def test_adamw_decouples_weight_decay() -> None:
    from nnx.optim import Adam, AdamW

    p1, p2, g = np.array([2.0]), np.array([2.0]), np.array([0.0])
    AdamW([("w", p1, g)], lr=0.1, weight_decay=0.5).step()
    assert p1[0] == pytest.approx(2.0 * (1 - 0.1 * 0.5))  # zero gradient: only the decay
    Adam([("w", p2, g)], lr=0.1, weight_decay=0.5).step()
    assert p2[0] == pytest.approx(2.0 - 0.1, abs=1e-6)  # L2: the decay goes through Adam's scaling


def test_rmsprop_step_by_hand() -> None:
    from nnx.optim import RMSprop

    p, g = np.array([1.0]), np.array([2.0])
    RMSprop([("w", p, g)], lr=0.01, rho=0.9, eps=0.0).step()
    s = 0.1 * 4.0
    assert p[0] == pytest.approx(1.0 - 0.01 * 2.0 / np.sqrt(s))


def test_clip_by_global_norm() -> None:
    a, ga = np.array([0.0, 0.0]), np.array([3.0, 0.0])
    b, gb = np.array([0.0]), np.array([4.0])
    SGD([("a", a, ga), ("b", b, gb)], lr=1.0, clip_norm=1.0).step()  # ||g|| = 5 -> scaled by 1/5
    assert np.allclose(a, [-0.6, 0.0]) and np.allclose(b, [-0.8])
    c, gc = np.array([0.0]), np.array([0.5])
    SGD([("c", c, gc)], lr=1.0, clip_norm=1.0).step()  # under the limit: unchanged
    assert c[0] == pytest.approx(-0.5)


def test_optimizer_state_round_trip() -> None:
    from nnx.optim import Adam

    p, g = np.array([1.0, 2.0]), np.array([0.3, -0.2])
    opt = Adam([("w", p, g)], lr=0.1)
    opt.step()
    saved, steps = opt.state_arrays(np.asarray), opt.steps
    p2 = p.copy()
    other = Adam([("w", p2, g)], lr=0.1)
    other.load_state_arrays(saved, steps)
    opt.step()
    other.step()
    assert np.array_equal(p, p2)


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("none", {}, [1.0, 1.0, 1.0, 1.0]),
        ("step", {"step_epochs": 1, "gamma": 0.5}, [1.0, 1.0, 0.5, 0.5]),  # 2 steps an epoch
        ("exponential", {"gamma": 0.1}, [1.0, 1.0, 0.1, 0.1]),
        ("cosine", {}, [1.0, (1 + np.cos(np.pi / 4)) / 2, 0.5, (1 + np.cos(3 * np.pi / 4)) / 2]),
    ],
)
def test_schedules(name: str, kwargs: dict, expected: list[float]) -> None:
    from nnx.optim import Schedule

    schedule = Schedule(name, **kwargs)
    assert [schedule.lr(1.0, t, 4, 2) for t in range(4)] == pytest.approx(expected)


def test_warmup_and_one_cycle() -> None:
    from nnx.optim import Schedule

    warm = Schedule("none", warmup_epochs=1)
    assert [warm.lr(1.0, t, 8, 4) for t in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    cycle = Schedule("onecycle", pct_start=0.3, div_factor=10, final_div_factor=100)
    lrs = [cycle.lr(1.0, t, 100, 10) for t in range(100)]
    assert lrs[0] == pytest.approx(0.1) and max(lrs) == pytest.approx(1.0)
    assert int(np.argmax(lrs)) == 29 and lrs[-1] == pytest.approx(0.1 / 100)
