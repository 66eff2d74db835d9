"""A network as a chain of layers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from nnx.backend import Backend
from nnx.nn.activations import ACTIVATIONS, ReLU
from nnx.nn.layer import Layer
from nnx.nn.linear import Linear


class Sequential:
    """y = f_L(... f_2(f_1(x))).   Backward runs the chain rule in reverse order.

    All parameters live in one flat array (and all gradients in another); each layer's `params`
    and `grads` are views into them, so an optimizer can update the whole network in one pass.
    """

    def __init__(self, layers: list[Layer], backend: Backend) -> None:
        self.layers = layers
        self.backend = backend
        if layers:
            layers[0].compute_dx = False
        for layer, following in zip(layers, layers[1:], strict=False):
            if isinstance(layer, Linear) and isinstance(following, ReLU):
                layer.fuse_relu = True
                following.applied_by_previous = True
        self.flat_params, self.flat_grads = self._flatten()

    def _flatten(self) -> tuple[Any, Any]:
        xp = self.backend.xp
        sizes = [int(p.size) for _, p, _ in self.parameters()]
        flat_params = xp.zeros(sum(sizes), dtype=self.backend.dtype)
        flat_grads = xp.zeros(sum(sizes), dtype=self.backend.dtype)
        offset = 0
        for layer in self.layers:
            for key, param in layer.params.items():
                size = int(param.size)
                view = flat_params[offset : offset + size].reshape(param.shape)
                view[...] = param
                layer.params[key] = view
                layer.grads[key] = flat_grads[offset : offset + size].reshape(param.shape)
                offset += size
        return flat_params, flat_grads

    def forward(self, x: Any, training: bool = False) -> Any:
        self.backend.check_owned(x, "the network's input")
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, dy: Any) -> None:
        for layer in reversed(self.layers):
            dy = layer.backward(dy)

    def parameters(self) -> Iterator[tuple[str, Any, Any]]:
        """(name, param, grad) for every parameter, in a fixed order: "0.W", "0.b", "2.W", ..."""
        for i, layer in enumerate(self.layers):
            for key, param in layer.params.items():
                yield f"{i}.{key}", param, layer.grads[key]

    def flat_parameters(self) -> list[tuple[str, Any, Any]]:
        """All parameters as one (name, param, grad) triple: what an optimizer updates at once."""
        return [("all", self.flat_params, self.flat_grads)]

    def state(self) -> dict[str, np.ndarray]:
        """Host copies of every parameter, keyed like `parameters()`; the model is not touched."""
        return {name: self.backend.to_numpy(p).copy() for name, p, _ in self.parameters()}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy host arrays into the parameters in place (shapes must match)."""
        xp = self.backend.xp
        for name, param, _ in self.parameters():
            param[...] = xp.asarray(arrays[name], dtype=param.dtype)

    def spec(self) -> list[dict[str, Any]]:
        return [layer.spec() for layer in self.layers]

    def count_parameters(self) -> int:
        return sum(int(p.size) for _, p, _ in self.parameters())

    def __repr__(self) -> str:
        return "Sequential(" + ", ".join(repr(layer) for layer in self.layers) + ")"


def build_model(spec: list[dict[str, Any]], backend: Backend, rng: np.random.Generator) -> Sequential:
    """Build a network from its layer list (as in a config or a model file's header)."""
    layers: list[Layer] = []
    for i, item in enumerate(spec):
        kind = item.get("type")
        if kind == "linear":
            layers.append(Linear(backend, int(item["in"]), int(item["out"]), item.get("init", "he"), rng))
        elif kind in ACTIVATIONS:
            layers.append(ACTIVATIONS[kind](backend))
        else:
            raise ValueError(f"layer {i}: unknown type {kind!r}")
    return Sequential(layers, backend)


def mlp_spec(sizes: list[int], activation: str = "relu", init: str = "he") -> list[dict[str, Any]]:
    """Layer list for an MLP with `sizes` = [784, 64, 10]: Linear, activation, ..., Linear."""
    spec: list[dict[str, Any]] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        spec.append({"type": "linear", "in": fan_in, "out": fan_out, "init": init})
        if i < len(sizes) - 2:
            spec.append({"type": activation})
    return spec
