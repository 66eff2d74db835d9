"""A network as a chain of layers, and building one from its layer list."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from nnx.backend import Backend
from nnx.nn.activations import ACTIVATIONS, ReLU, Softmax
from nnx.nn.conv import AvgPool2D, Conv2D, Flatten, MaxPool2D, Reshape
from nnx.nn.layer import Layer
from nnx.nn.linear import Linear
from nnx.nn.regularize import BatchNorm, Dropout
from nnx.ops import mix_key, output_size

INPUT_SHAPE = (784,)
IMAGE_SHAPE = (1, 28, 28)
CLASSES = 10


class Sequential:
    """y = f_L(... f_2(f_1(x))).   Backward runs the chain rule in reverse order.

    All parameters live in one flat array (and all gradients in another); each layer's `params`
    and `grads` are views into them, so an optimizer can update the whole network in one pass.
    """

    def __init__(
        self,
        layers: list[Layer],
        backend: Backend,
        kept_per_sample: int = 0,
        output_shapes: list[tuple[int, ...]] | None = None,
    ) -> None:
        self.layers = layers
        self.backend = backend
        # Each layer's output shape for one image (build_model works them out), for `summary`.
        self.output_shapes = output_shapes
        # Activation elements one sample keeps from the forward pass to the backward (the outputs
        # of the layers that allocate one, a flatten's copy of images; ReLUs and the like may not).
        self.kept_per_sample = kept_per_sample
        # What one sample holds at a step's peak, estimated (check_batch_fits): the kept outputs,
        # and at the largest output its gradient and one working copy of that (a ReLU's dx, a
        # flatten's dx in the images' layout). Counting the kept outputs alone passes networks
        # whose step exhausts memory (measured peaks against it: docs/explanations/reliability.md).
        largest = max((math.prod(shape) for shape in output_shapes or []), default=0)
        self.step_per_sample = kept_per_sample + 2 * largest
        # Nothing before the first layer with parameters needs dL/dx: skip computing it.
        for layer in layers:
            layer.compute_dx = False
            if layer.params:
                break
        for layer, following in zip(layers, layers[1:], strict=False):
            if isinstance(layer, (Linear, Conv2D)) and isinstance(following, ReLU):
                layer.fuse_relu = True
                following.applied_by_previous = True
            if isinstance(layer, ReLU) and isinstance(following, MaxPool2D):
                # max commutes with relu, and the pool's gradient reaches only each window's
                # maximum: the ReLU's mask is then 1[window max > 0], which the pool applies to its
                # small dy instead of the ReLU making a pass over the large one.
                layer.mask_applied_by_next = True
                following.relu_before = True
        backend.ops.network_built(layers)
        self.flat_params, self.flat_grads = self._flatten()
        # A final Softmax is for inference; training feeds logits to the fused loss instead.
        self.logit_layers = layers[:-1] if layers and isinstance(layers[-1], Softmax) else layers
        self.random_layers = [(i, layer) for i, layer in enumerate(layers) if layer.uses_random]

    def check_batch_fits(self, rows: int, state_arrays: int = 0) -> None:
        """Refuse training on batches of `rows` when the memory a step is estimated to hold (a
        batch's activations and gradients, `step_per_sample`, and the parameters with their
        gradients and the optimizer's `state_arrays` arrays of their size) exceeds the device's,
        before it allocates them and dies of a MemoryError (or the kernel's OOM killer) halfway."""
        activations, weights = self.training_bytes(rows, state_arrays)
        have = self.backend.memory_bytes()
        if activations + weights > have:
            where = f"{self.backend.name}'s memory" if self.backend.is_gpu else "this machine's memory"
            raise ValueError(
                f"a batch of {rows:,} images needs at least {human_bytes(activations)} for its activations and "
                f"gradients in this network, beside {human_bytes(weights)} for its {self.count_parameters():,} "
                f"parameters, their gradients and the optimizer's state: more than all {human_bytes(have)} of {where}"
            )

    def inference_rows(self, limit: int) -> int:
        """At most `limit` rows, fewer where a batch of them could not fit beside the parameters
        (theirs, their gradients' and an optimizer's two arrays of state, during training): the
        network's kept activations, twice over for what its layers allocate on the way: a network
        that trains on small batches is evaluated on no more rows than fit."""
        itemsize = np.dtype(self.backend.dtype).itemsize
        room = self.backend.memory_bytes() - self.training_bytes(0, state_arrays=2)[1]
        return int(min(max(room // max(2 * self.kept_per_sample * itemsize, 1), 1), limit))

    def training_bytes(self, rows: int, state_arrays: int = 0) -> tuple[int, int]:
        """(a batch's activations and gradients at a step's peak, the parameters + their gradients +
        the optimizer's state) in bytes."""
        itemsize = np.dtype(self.backend.dtype).itemsize
        return rows * self.step_per_sample * itemsize, self.count_parameters() * (2 + state_arrays) * itemsize

    def _flatten(self) -> tuple[Any, Any]:
        xp = self.backend.xp
        total = sum(int(p.size) for _, p, _ in self.parameters())
        flat_params = xp.zeros(total, dtype=self.backend.dtype)
        flat_grads = xp.zeros(total, dtype=self.backend.dtype)
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
        """The network's output (probabilities when it ends in a Softmax layer)."""
        self.backend.check_owned(x, "the network's input")
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def logits(self, x: Any, training: bool = False) -> Any:
        """The output before a final Softmax: what the loss is computed from."""
        self.backend.check_owned(x, "the network's input")
        for layer in self.logit_layers:
            x = layer.forward(x, training)
        return x

    def backward(self, dy: Any) -> None:
        """Backpropagate dL/d(logits) through the layers `logits` ran."""
        for layer in reversed(self.logit_layers):
            dy = layer.backward(dy)
            if dy is None:  # the layers below need no gradient (see compute_dx)
                break

    def set_random_key(self, *parts: int, row_offset: int = 0) -> None:
        """Key every layer's random numbers for the next batch, e.g. by (seed, epoch, batch).
        `row_offset`: the first row of this batch within the global batch when data-parallel
        ranks share one, so that each rank draws its own rows' numbers of the one global draw."""
        if not self.random_layers:
            return
        base = mix_key(*parts)
        for i, layer in self.random_layers:
            layer.random_key = mix_key(base, i)
            layer.row_offset = row_offset

    def parameters(self) -> Iterator[tuple[str, Any, Any]]:
        """(name, param, grad) for every parameter, in a fixed order: "0.W", "0.b", "2.W", ..."""
        for i, layer in enumerate(self.layers):
            for key, param in layer.params.items():
                yield f"{i}.{key}", param, layer.grads[key]

    def flat_parameters(self) -> list[tuple[str, Any, Any]]:
        """All parameters as one (name, param, grad) triple: what an optimizer updates at once."""
        return [("all", self.flat_params, self.flat_grads)]

    def buffers(self) -> Iterator[tuple[str, Any]]:
        for i, layer in enumerate(self.layers):
            for key, buffer in layer.buffers.items():
                yield f"{i}.{key}", buffer

    def state(self) -> dict[str, np.ndarray]:
        """Host copies of every parameter and buffer; the model itself is not touched."""
        arrays = {name: p for name, p, _ in self.parameters()}
        arrays.update(self.buffers())
        return {name: self.backend.to_numpy(a).copy() for name, a in arrays.items()}

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {name: tuple(p.shape) for name, p, _ in self.parameters()}
        shapes.update({name: tuple(b.shape) for name, b in self.buffers()})
        return shapes

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy host arrays into the parameters and buffers in place (shapes must match)."""
        xp = self.backend.xp
        targets = {name: p for name, p, _ in self.parameters()}
        targets.update(self.buffers())
        for name, target in targets.items():
            target[...] = xp.asarray(arrays[name], dtype=target.dtype)

    def spec(self) -> list[dict[str, Any]]:
        return [layer.spec() for layer in self.layers]

    def count_parameters(self) -> int:
        return sum(int(p.size) for _, p, _ in self.parameters())

    def summary(self) -> list[tuple[str, tuple[int, ...] | None, int]]:
        """A row per layer: what it is (its spec), its output shape for one image, its parameters."""
        rows = []
        for i, layer in enumerate(self.layers):
            spec = dict(layer.spec())
            kind = spec.pop("type")
            text = kind + (f"({', '.join(f'{k}={v}' for k, v in spec.items())})" if spec else "")
            shape = self.output_shapes[i] if self.output_shapes else None
            rows.append((text, shape, sum(int(p.size) for p in layer.params.values())))
        return rows

    def describe(self) -> str:
        """Compact: the sizes through the layers with parameters, e.g. 784-64-10 or 784-conv32-conv64-128-10."""
        parts = [str(INPUT_SHAPE[0])]
        for layer in self.layers:
            spec = layer.spec()
            if spec["type"] == "linear":
                parts.append(str(spec["out"]))
            elif spec["type"] == "conv2d":
                parts.append(f"conv{spec['out']}")
        return "-".join(parts)

    def __repr__(self) -> str:
        return "Sequential(" + ", ".join(repr(layer) for layer in self.layers) + ")"


def build_model(
    spec: list[dict[str, Any]], backend: Backend, rng: np.random.Generator, classes: int | None = None
) -> Sequential:
    """Build a network from its layer list (a config's, or a model file's), checking that the
    shapes chain from the input (MNIST's 784 pixels, unless the first layer says another "in")
    to `classes` outputs when given. Sizes a layer can take from its input ("in" of linear and
    conv2d, "features" of batchnorm) may be left out."""
    # First every layer's shape, checks and parameter count, then the layers themselves: a network
    # too large for this machine is refused before any of its layers allocates its weights.
    plans: list[tuple[Callable[[np.random.Generator], Layer], tuple[int, ...]]] = []
    budget = ParameterBudget(backend)
    kept = 0  # elements per sample of the outputs that layers allocate (Sequential.kept_per_sample)
    first = spec[0] if spec else {}
    linear_first = first.get("type") == "linear" and "in" in first
    shape: tuple[int, ...] = (_count(first, "in", "layer 0 (linear)"),) if linear_first else INPUT_SHAPE
    for i, item in enumerate(spec):
        kind = item.get("type")
        where = f"layer {i} ({kind})"
        if kind == "conv2d" and len(shape) == 1:
            if shape != INPUT_SHAPE:
                raise ValueError(f"{where}: needs an image, but its input is a flat vector of {shape[0]}")
            shape = IMAGE_SHAPE
            plans.append((lambda _rng: Reshape(backend, IMAGE_SHAPE), shape))
        budget.add(kind, item, shape, where)
        make, output = _plan_layer(kind, item, shape, backend, where)
        plans.append((make, output))
        if kind in ALLOCATES_OUTPUT or (kind == "flatten" and len(shape) == 3):
            kept += math.prod(output)
        shape = output
    if classes is not None and shape != (classes,):
        raise ValueError(f"the last layer gives outputs of shape {shape}; MNIST needs {classes} (one per digit)")
    if any(item.get("type") == Softmax.kind for item in spec[:-1]):
        raise ValueError("softmax may only be the last layer")
    layers = [make(rng) for make, _ in plans]  # in order: each draws its initial weights from rng
    return Sequential(layers, backend, kept, [shape for _, shape in plans])


def human_bytes(n_bytes: int) -> str:
    """1.5 GiB, 23.0 MiB, 12.3 KiB."""
    if n_bytes >= 2**30:
        return f"{n_bytes / 2**30:,.1f} GiB"
    return f"{n_bytes / 2**20:,.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:,.1f} KiB"


# Layers whose forward always allocates a new output array of their output's shape. A flatten
# does too when it flattens images: they are views in channels-last memory, which a reshape copies.
ALLOCATES_OUTPUT = ("linear", "conv2d", "maxpool2d", "avgpool2d", "batchnorm")


class ParameterBudget:
    """Counts a network's parameters layer by layer before any is allocated, and refuses the layer
    that makes them too many: a model file (or config) declaring a 10^9-unit layer is an error
    with its parameter count, not gigabytes allocated and a crash. The limit: a quarter of the
    memory the arrays live in (the GPU's, or the host's) for the parameters (training needs as
    much again for gradients, and more for the optimizer's state)."""

    def __init__(self, backend: Backend) -> None:
        self.itemsize = np.dtype(backend.dtype).itemsize
        self.count = 0
        self.limit = backend.memory_bytes() // 4

    def add(self, kind: Any, item: dict[str, Any], shape: tuple[int, ...], where: str) -> None:
        if kind == "linear":
            out = _count(item, "out", where)
            size = shape[0] * out + out
        elif kind == "conv2d":
            k, out = _count(item, "kernel", where, 3), _count(item, "out", where)
            size = out * shape[0] * k * k + out
        elif kind == "batchnorm":
            size = 4 * shape[0]
        else:
            return
        self.count += max(size, 0)
        if self.count * self.itemsize > self.limit:
            raise ValueError(
                f"{where}: the network reaches {self.count:,} parameters ({human_bytes(self.count * self.itemsize)}), "
                f"more than this machine can train (limit {human_bytes(self.limit)} for the parameters)"
            )


def _expect_in(item: dict[str, Any], key: str, actual: int, where: str) -> None:
    if item.get(key) is not None and _count(item, key, where) != actual:
        raise ValueError(f"{where}: {key} is {item[key]} but its input has {actual}")


def _count(item: dict[str, Any], key: str, where: str, default: int | None = None, least: int = 1) -> int:
    """A layer's size, kernel, stride or padding: a whole number from `least` to 2**31 (a config's
    are checked before; a model file's header is not, and 0, 8.5, "8", true or 1e300 are refused)."""
    return _whole(item.get(key, default), f"{where}: {key}", least)


def _whole(value: Any, what: str, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= 1 << 31:
        raise ValueError(f"{what} must be a whole number from {least} to 2^31, not {str(value)[:40]}")
    return value


def _real(item: dict[str, Any], key: str, where: str, default: float, low: float, high: float) -> float:
    """A layer's rate or constant: a finite number in [low, high] (NaN, infinities and text refused)."""
    value = item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{where}: {key} must be a number from {low:g} to {high:g}, not {str(value)[:40]}")
    return float(value)


def _plan_layer(
    kind: Any, item: dict[str, Any], shape: tuple[int, ...], backend: Backend, where: str
) -> tuple[Callable[[np.random.Generator], Layer], tuple[int, ...]]:
    """(how to build the layer from an rng, its output shape), once its settings are checked
    against its input `shape`; nothing is allocated yet."""
    if kind == "linear":
        if len(shape) != 1:
            raise ValueError(f"{where}: needs a flat input but gets shape {shape}; add a flatten layer before it")
        _expect_in(item, "in", shape[0], where)
        out = _count(item, "out", where)
        init = item.get("init", "he")
        return (lambda rng: Linear(backend, shape[0], out, init, rng)), (out,)
    if kind == "conv2d":
        if len(shape) != 3:
            raise ValueError(f"{where}: needs (channels, height, width) but gets shape {shape}")
        _expect_in(item, "in", shape[0], where)
        k, stride = _count(item, "kernel", where, 3), _count(item, "stride", where, 1)
        pad, out = _count(item, "padding", where, 0, least=0), _count(item, "out", where)
        oh, ow = output_size(shape[1], k, stride, pad), output_size(shape[2], k, stride, pad)
        if oh < 1 or ow < 1:
            raise ValueError(f"{where}: a {k}x{k} kernel does not fit its {shape[1]}x{shape[2]} input")
        init = item.get("init", "he")
        return (lambda rng: Conv2D(backend, shape[0], out, k, stride, pad, init, rng)), (out, oh, ow)
    if kind in ("maxpool2d", "avgpool2d"):
        if len(shape) != 3:
            raise ValueError(f"{where}: needs (channels, height, width) but gets shape {shape}")
        size = _count(item, "size", where, 2)
        stride = _count(item, "stride", where, size) if item.get("stride") is not None else size
        cls = MaxPool2D if kind == "maxpool2d" else AvgPool2D
        oh, ow = output_size(shape[1], size, stride, 0), output_size(shape[2], size, stride, 0)
        if oh < 1 or ow < 1:
            raise ValueError(f"{where}: a {size}x{size} window does not fit its {shape[1]}x{shape[2]} input")
        return (lambda _rng: cls(backend, size, stride)), (shape[0], oh, ow)
    if kind == "flatten":
        return (lambda _rng: Flatten(backend)), (math.prod(shape),)
    if kind == "reshape":
        if not isinstance(item.get("shape"), list):
            raise ValueError(f"{where}: shape must be a list of sizes")
        target = tuple(_whole(size, f"{where}: shape") for size in item["shape"])
        if math.prod(target) != math.prod(shape):
            raise ValueError(f"{where}: cannot reshape {shape} to {target}")
        return (lambda _rng: Reshape(backend, target)), target
    if kind == "dropout":
        p = _real(item, "p", where, 0.5, 0.0, 0.999999)
        return (lambda _rng: Dropout(backend, p)), shape
    if kind == "batchnorm":
        _expect_in(item, "features", shape[0], where)
        momentum, eps = _real(item, "momentum", where, 0.1, 0.0, 1.0), _real(item, "eps", where, 1e-5, 1e-30, 1.0)
        return (lambda _rng: BatchNorm(backend, shape[0], momentum, eps)), shape
    if kind in ACTIVATIONS:
        extra = {"alpha": _real(item, "alpha", where, 0.0, 1e-12, 1e6)} if "alpha" in item else {}
        return (lambda _rng: ACTIVATIONS[kind](backend, **extra)), shape
    raise ValueError(f"{where}: unknown layer type {kind!r}")


def mlp_spec(sizes: list[int], activation: str = "relu", init: str = "he") -> list[dict[str, Any]]:
    """Layer list for an MLP with `sizes` = [784, 64, 10]: Linear, activation, ..., Linear."""
    spec: list[dict[str, Any]] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        spec.append({"type": "linear", "in": fan_in, "out": fan_out, "init": init})
        if i < len(sizes) - 2:
            spec.append({"type": activation})
    return spec
