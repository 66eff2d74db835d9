"""GPU time of the parts of mnist_cnn's convolution and pooling layers, the reference's (nnx/ops.py)
beside the fused kernels' (nnx/gpu_kernels.py), one part at a time (cupyx.profiler.benchmark: CUDA
events, median of 30 after 3 warm-ups). For choosing what the GPU's ops do; run by hand on a GPU:

    python benchmarks/gpu_parts.py [--batch 128]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import cupy
import numpy as np
from cupyx.profiler import benchmark

from nnx.backend import get_backend
from nnx.nn.conv import Conv2D, MaxPool2D
from nnx.nn.regularize import BatchNorm
from nnx.ops import Ops


def ms(work: Callable[[], Any]) -> float:
    return float(np.median(benchmark(work, n_repeat=30, n_warmup=3).gpu_times[0])) * 1e3  # host timings


def row(name: str, work: Callable[[], Any]) -> None:
    print(f"| {name} | {ms(work):.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    b = parser.parse_args().batch
    backend = get_backend("gpu", "float32")
    rs = cupy.random.default_rng(0)
    print(f"| mnist_cnn parts, batch {b} | ms on the GPU |\n| --- | --- |")
    for name, c, o, hw in (("conv1", 1, 32, 28), ("conv2", 32, 64, 14)):
        conv_parts(backend, rs, b, name, c, o, hw)
    for name, c, hw in (("pool1", 32, 28), ("pool2", 64, 14)):
        pool_parts(backend, rs, b, name, c, hw)
    batchnorm_parts(backend, rs, b)


def conv_parts(backend: Any, rs: Any, b: int, name: str, c: int, o: int, hw: int) -> None:
    fused, reference = backend.ops, Ops(cupy)
    layer = Conv2D(backend, c, o, 3, 1, 1)
    layer.compute_dx = c > 1
    x = rs.standard_normal((b, c, hw, hw), dtype=cupy.float32)
    y = layer.forward(x, training=True)
    dy = rs.standard_normal(y.shape, dtype=cupy.float32)
    dy = cupy.ascontiguousarray(dy.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # NHWC, as the layers give
    row(f"{name} forward (layer)", lambda: layer.forward(x, training=True))
    row(f"{name} backward (layer)", lambda: layer.backward(dy))
    dy2 = dy.transpose(0, 2, 3, 1).reshape(-1, o)
    cols = fused.im2col(x, 3, 3, 1, 1).reshape(-1, 9 * c)
    for label, ops in (("reference", reference), ("fused", fused)):
        row(f"{name} im2col, {label}", lambda ops=ops: ops.im2col(x, 3, 3, 1, 1))
        row(f"{name} db = sum_rows(dY), {label}", lambda ops=ops: ops.sum_rows(dy2))
    row(f"{name} dW = dY^T cols", lambda: fused.matmul_tn(dy2, cols))
    if c > 1:
        weights = cupy.ascontiguousarray(layer.params["W"].transpose(0, 2, 3, 1))
        for label, ops in (("reference", reference), ("fused", fused)):
            row(f"{name} dx = col2im_product, {label}", lambda ops=ops: ops.col2im_product(dy2, weights, x.shape, 1, 1))


def pool_parts(backend: Any, rs: Any, b: int, name: str, c: int, hw: int) -> None:
    fused, reference = backend.ops, Ops(cupy)
    pool = MaxPool2D(backend, 2)
    pool.relu_before = True
    x = cupy.maximum(rs.standard_normal((b, hw, hw, c), dtype=cupy.float32), 0).transpose(0, 3, 1, 2)
    y = pool.forward(x, training=True)
    dy = cupy.ascontiguousarray(rs.standard_normal(y.shape, dtype=cupy.float32))
    row(f"{name} forward (layer)", lambda: pool.forward(x, training=True))
    row(f"{name} backward (layer)", lambda: pool.backward(dy))
    xn, yn, dyn = x.transpose(0, 2, 3, 1), pool.y, dy.transpose(0, 2, 3, 1)
    first, dx = cupy.empty(yn.shape, dtype=cupy.uint8), cupy.empty(xn.shape, dtype=cupy.float32)
    for label, ops in (("reference", reference), ("fused", fused)):
        row(f"{name} max_pool, {label}", lambda ops=ops: ops.max_pool(xn, 2, 2, out=yn, first=first))
        row(f"{name} max_pool_backward, {label}", lambda ops=ops: ops.max_pool_backward(dyn, yn, first, 2, 2, True, dx))
    row(f"{name} one copy of x (a floor)", lambda: xn.copy())


def batchnorm_parts(backend: Any, rs: Any, b: int) -> None:
    """A batch norm after mnist_cnn's first convolution (32 channels of 28 x 28, channels-last)."""
    norm = BatchNorm(backend, 32)
    x = rs.standard_normal((b, 28, 28, 32), dtype=cupy.float32).transpose(0, 3, 1, 2)
    dy = rs.standard_normal((b, 28, 28, 32), dtype=cupy.float32).transpose(0, 3, 1, 2)
    norm.forward(x, training=True)
    row("batchnorm forward (layer)", lambda: norm.forward(x, training=True))
    row("batchnorm backward (layer)", lambda: norm.backward(dy))
    row("batchnorm sum over (N, H, W): x.sum(axis=(0, 2, 3))", lambda: x.sum(axis=(0, 2, 3)))
    row("batchnorm sum over (N, H, W): as rows, ops.sum_rows", lambda: norm._sum(x))


if __name__ == "__main__":
    from kernels import host_line  # (this script's folder is on sys.path)

    print(host_line(), flush=True)  # the machine these figures belong to, and no other
    main()
