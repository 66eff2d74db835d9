"""Optimizers: they see (param, grad) pairs and update the params in place."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class SGD:
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay.

    g = dL/dW + wd W;   v <- mu v + g;   W <- W - lr (g + mu v) (Nesterov) or W - lr v.
    With mu = 0 this is plain W <- W - lr g, the seed project's update.
    """

    def __init__(
        self,
        params: Iterable[tuple[str, Any, Any]],
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        self.params = [(name, p, g) for name, p, g in params]
        self.lr = lr
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.velocity = {name: p * 0 for name, p, _ in self.params} if momentum else {}

    def step(self) -> None:
        mu, lr = self.momentum, self.lr
        for name, p, g in self.params:
            if self.weight_decay:
                g = g + self.weight_decay * p
            if mu:
                v = self.velocity[name]
                v *= mu
                v += g
                g = g + mu * v if self.nesterov else v
            p -= lr * g
