"""Optimizers: they see (param, grad) pairs and update the params in place."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nnx.ops import Ops


class SGD:
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay.

    d = dL/dW + wd W;   v <- mu v + d;   W <- W - lr (d + mu v) (Nesterov) or W - lr v.
    With mu = 0 this is plain W <- W - lr d, the seed project's update. The arithmetic is
    `Ops.sgd_update` (nnx/ops.py): one fused kernel per parameter array on a GPU. Give it
    `model.flat_parameters()` and that is one kernel for the whole network.
    """

    def __init__(
        self,
        params: Iterable[tuple[str, Any, Any]],
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        ops: Ops | None = None,
    ) -> None:
        self.params = [(name, p, g) for name, p, g in params]
        self.lr = lr
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        # The reference update uses array operators only, so it needs no xp of its own.
        self.ops = ops or Ops(xp=None)
        self.velocity = {name: p * 0 for name, p, _ in self.params} if momentum else {}

    def step(self) -> None:
        for name, p, g in self.params:
            self.ops.sgd_update(p, g, self.velocity.get(name), self.lr, self.momentum, self.nesterov, self.weight_decay)
