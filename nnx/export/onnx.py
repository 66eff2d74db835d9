"""ONNX export: the network in eval mode, with its preprocessing, as one graph that takes uint8.

Input `pixels`: uint8 (N, 784). Outputs `logits` and `probabilities` (their softmax; a model's
final softmax layer is that softmax, as in Sequential.logits). Dropout is left out (eval mode);
batch norm becomes BatchNormalization with its running statistics; GELU (tanh form) is spelled
out with Tanh, so any ONNX runtime of opset 17 runs it. A layer kind with no exporter here is an
error naming it, never skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nnx.atomic import write_atomic
from nnx.errors import NnxError

OPSET = 17


class _Graph:
    def __init__(self, helper: Any, numpy_helper: Any, dtype: np.dtype) -> None:
        self.helper, self.numpy_helper, self.dtype = helper, numpy_helper, dtype
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.count = 0

    def const(self, value: Any, dtype: Any = None) -> str:
        name = f"c{len(self.initializers)}"
        array = np.asarray(value, dtype=dtype or self.dtype)
        self.initializers.append(self.numpy_helper.from_array(array, name))
        return name

    def op(self, kind: str, *inputs: str, **attributes: Any) -> str:
        self.count += 1
        out = f"t{self.count}"
        self.nodes.append(self.helper.make_node(kind, list(inputs), [out], name=f"{kind}_{self.count}", **attributes))
        return out


def export_onnx(model: Any, preprocess: Any, path: Path) -> Path:
    """Write `model` (a Sequential) with `preprocess` to `path` as ONNX, checked by onnx.checker."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise NnxError("ONNX export needs onnx: pip install 'nnx[export]'") from None
    backend = model.backend
    dtype = np.dtype(backend.dtype)
    g = _Graph(helper, numpy_helper, dtype)
    elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}[dtype]
    # x = pixels * (1 / (255 std)) - mean / std, as nnx's Preprocess computes it
    x = g.op("Cast", "pixels", to=elem)
    x = g.op("Mul", x, g.const(1.0 / (255.0 * preprocess.std)))
    x = g.op("Sub", x, g.const(preprocess.mean / preprocess.std))
    layers = list(model.layers)
    if layers and layers[-1].kind == "softmax":  # as Sequential.logits: probabilities come from the logits
        layers = layers[:-1]
    for layer in layers:
        spec = layer.spec()
        kind = spec["type"]
        p = {k: backend.to_numpy(v) for k, v in layer.params.items()}
        buffers = {k: backend.to_numpy(v) for k, v in layer.buffers.items()}
        if kind == "linear":
            x = g.op("Gemm", x, g.const(p["W"]), g.const(p["b"]))  # x W + b, W: (in, out)
        elif kind == "conv2d":
            pad, stride, k = spec["padding"], spec["stride"], spec["kernel"]
            x = g.op("Conv", x, g.const(p["W"]), g.const(p["b"]), kernel_shape=[k, k], strides=[stride, stride],
                     pads=[pad] * 4)  # fmt: skip
        elif kind in ("maxpool2d", "avgpool2d"):
            size, stride = spec["size"], spec["stride"]
            x = g.op("MaxPool" if kind == "maxpool2d" else "AveragePool", x, kernel_shape=[size, size],
                     strides=[stride, stride])  # fmt: skip
        elif kind == "flatten":
            x = g.op("Flatten", x, axis=1)
        elif kind == "reshape":
            x = g.op("Reshape", x, g.const([-1, *spec["shape"]], np.int64))
        elif kind == "dropout":
            continue  # eval mode: the identity
        elif kind == "batchnorm":
            statistics = g.const(buffers["running_mean"]), g.const(buffers["running_var"])
            x = g.op("BatchNormalization", x, g.const(p["gamma"]), g.const(p["beta"]), *statistics,
                     epsilon=float(spec["eps"]))  # fmt: skip
        elif kind in ("relu", "sigmoid", "tanh"):
            x = g.op({"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}[kind], x)
        elif kind == "leaky_relu":
            x = g.op("LeakyRelu", x, alpha=float(spec["alpha"]))
        elif kind == "elu":
            x = g.op("Elu", x, alpha=float(spec["alpha"]))
        elif kind == "gelu":
            # x/2 (1 + tanh(c (x + a x^3)))
            cube = g.op("Mul", g.op("Mul", x, x), x)
            inner = g.op("Mul", g.op("Add", x, g.op("Mul", cube, g.const(layer.A))), g.const(layer.C))
            x = g.op("Mul", g.op("Mul", x, g.const(0.5)), g.op("Add", g.op("Tanh", inner), g.const(1.0)))
        elif kind == "softmax":
            x = g.op("Softmax", x, axis=1)
        else:
            raise NnxError(f"ONNX export: no exporter for layer {kind!r}")
    g.nodes.append(helper.make_node("Identity", [x], ["logits"], name="logits"))
    g.nodes.append(helper.make_node("Softmax", [x], ["probabilities"], name="probabilities", axis=1))
    graph = helper.make_graph(
        g.nodes,
        "nnx",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", 784])],
        [
            helper.make_tensor_value_info("logits", elem, ["N", "classes"]),
            helper.make_tensor_value_info("probabilities", elem, ["N", "classes"]),
        ],
        g.initializers,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nnx")
    onnx_model.ir_version = 8  # readable by onnxruntime releases from 1.14 on
    onnx.checker.check_model(onnx_model, full_check=True)
    write_atomic(path, onnx_model.SerializeToString())
    return path
