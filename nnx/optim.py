"""Optimizers and learning-rate schedules.

Optimizers see (name, param, grad) triples and update the params in place; give them
`model.flat_parameters()` and the whole network is one array. The arithmetic of each update is
in nnx/ops.py (`Ops.sgd_update`, ...): plain xp on the CPU, one fused kernel on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from nnx.ops import Ops


class Optimizer:
    """Shared parts: the parameter list, lr, gradient clipping and state for checkpoints."""

    state_names: tuple[str, ...] = ()

    def __init__(
        self,
        params: Iterable[tuple[str, Any, Any]],
        lr: float,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
        ops: Ops | None = None,
    ) -> None:
        self.params = [(name, p, g) for name, p, g in params]
        self.lr = lr
        self.weight_decay = weight_decay
        self.clip_norm = clip_norm
        # Without a backend's ops, the host (NumPy) reference.
        self.ops = ops or Ops(np)
        self.steps = 0
        self.state: dict[str, dict[str, Any]] = {
            key: {name: p * 0 for name, p, _ in self.params} for key in self.state_names
        }

    def clip_gradients(self) -> None:
        """Scale all gradients by min(1, c / ||g||) for the global L2 norm ||g||; the factor stays
        on the device (no synchronisation)."""
        if not self.clip_norm:
            return
        xp = self.ops.xp
        norm = xp.sqrt(sum((g * g).sum() for _, _, g in self.params))
        scale = xp.minimum(self.clip_norm / (norm + 1e-12), 1)
        for _, _, g in self.params:
            g *= scale

    def step(self) -> None:
        self.clip_gradients()
        self.steps += 1
        for name, p, g in self.params:
            self.update(name, p, g)

    def update(self, name: str, p: Any, g: Any) -> None:
        raise NotImplementedError

    def state_arrays(self, to_numpy: Any) -> dict[str, np.ndarray]:
        """Host copies of the optimizer's state, for checkpoints: {"velocity/all": ...}."""
        return {f"{key}/{name}": to_numpy(a).copy() for key, arrays in self.state.items() for name, a in arrays.items()}

    def load_state_arrays(self, arrays: dict[str, np.ndarray], steps: int) -> None:
        for key, named in self.state.items():
            for name, target in named.items():
                target[...] = self.ops.xp.asarray(arrays[f"{key}/{name}"], dtype=target.dtype)
        self.steps = steps


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay.

    d = dL/dW + wd W;   v <- mu v + d;   W <- W - lr (d + mu v) (Nesterov) or W - lr v.
    With mu = 0 this is plain W <- W - lr d, the seed project's update.
    """

    def __init__(
        self,
        params: Iterable[tuple[str, Any, Any]],
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        ops: Ops | None = None,
        clip_norm: float | None = None,
    ) -> None:
        self.state_names = ("velocity",) if momentum else ()
        super().__init__(params, lr, weight_decay, clip_norm, ops)
        self.momentum = momentum
        self.nesterov = nesterov

    def update(self, name: str, p: Any, g: Any) -> None:
        v = self.state["velocity"][name] if self.momentum else None
        self.ops.sgd_update(p, g, v, self.lr, self.momentum, self.nesterov, self.weight_decay)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015); weight decay added to the gradient (L2). AdamW: decoupled."""

    state_names = ("m", "v")
    decoupled = False

    def __init__(
        self,
        params: Iterable[tuple[str, Any, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        ops: Ops | None = None,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(params, lr, weight_decay, clip_norm, ops)
        self.betas = betas
        self.eps = eps

    def update(self, name: str, p: Any, g: Any) -> None:
        b1, b2 = self.betas
        self.ops.adam_update(
            p,
            g,
            self.state["m"][name],
            self.state["v"][name],
            self.lr,
            b1,
            b2,
            self.eps,
            self.steps,
            self.weight_decay,
            self.decoupled,
        )


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019): W <- W - lr wd W apart."""

    decoupled = True


class RMSprop(Optimizer):
    """RMSprop (Hinton): s <- rho s + (1 - rho) g^2;  W <- W - lr g / (sqrt(s) + eps)."""

    state_names = ("square_avg",)

    def __init__(
        self,
        params: Iterable[tuple[str, Any, Any]],
        lr: float = 1e-3,
        rho: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        ops: Ops | None = None,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(params, lr, weight_decay, clip_norm, ops)
        self.rho = rho
        self.eps = eps

    def update(self, name: str, p: Any, g: Any) -> None:
        self.ops.rmsprop_update(p, g, self.state["square_avg"][name], self.lr, self.rho, self.eps, self.weight_decay)


class Schedule:
    """lr as a function of the batch step t (0-based) of T in all, with E steps per epoch.

    none: lr.   step: lr * gamma^floor(epoch / step_epochs).   exponential: lr * gamma^epoch.
    cosine: lr (1 + cos(pi t / T)) / 2.   onecycle (Smith 2018, cosine phases as in PyTorch): from
    lr / div_factor up to lr over the first pct_start of T, then down to lr / div_factor / final_div.
    warmup_epochs > 0 ramps linearly from 0 over those epochs and multiplies any of the above."""

    def __init__(
        self,
        name: str = "none",
        warmup_epochs: float = 0.0,
        step_epochs: int = 1,
        gamma: float = 0.1,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
    ) -> None:
        self.name = name
        self.warmup_epochs = warmup_epochs
        self.step_epochs = step_epochs
        self.gamma = gamma
        self.pct_start = pct_start
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor

    def lr(self, base: float, step: int, total: int, per_epoch: int) -> float:
        epoch = step // per_epoch
        if self.name == "none":
            lr = base
        elif self.name == "step":
            lr = base * self.gamma ** (epoch // self.step_epochs)
        elif self.name == "exponential":
            lr = base * self.gamma**epoch
        elif self.name == "cosine":
            lr = base * 0.5 * (1 + math.cos(math.pi * step / total))
        elif self.name == "onecycle":
            lr = self._one_cycle(base, step, total)
        else:
            raise ValueError(f"unknown schedule {self.name!r}")
        warmup_steps = self.warmup_epochs * per_epoch
        if warmup_steps and step < warmup_steps:
            # min: with a fractional warm-up length the last ramp step would pass 1 (by up to 9%)
            lr *= min(1.0, (step + 1) / warmup_steps)
        return lr

    def _one_cycle(self, base: float, step: int, total: int) -> float:
        start = base / self.div_factor
        end = start / self.final_div_factor
        peak_step = max(self.pct_start * total - 1, 1)
        if step <= peak_step:
            return _cosine_between(start, base, step / peak_step)
        return _cosine_between(base, end, (step - peak_step) / max(total - 1 - peak_step, 1))


def _cosine_between(a: float, b: float, fraction: float) -> float:
    # a at fraction 0, b at fraction 1, along half a cosine
    return b + (a - b) * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}
