"""GPU time of the parts of mnist_cnn's convolution and pooling layers, and of alternatives to
them, one kernel chain at a time (cupyx.profiler.benchmark: CUDA events, median of 30 after 3
warm-ups). For choosing what the GPU's ops do; run by hand on a GPU:

    python benchmarks/gpu_parts.py [--batch 128]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import cupy
from cupyx.profiler import benchmark

from nnx.backend import get_backend
from nnx.nn.conv import Conv2D, MaxPool2D, col2im_product, im2col


def ms(work: Callable[[], Any]) -> float:
    return float(cupy.median(cupy.asarray(benchmark(work, n_repeat=30, n_warmup=3).gpu_times[0]))) * 1e3


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


def conv_parts(backend: Any, rs: Any, b: int, name: str, c: int, o: int, hw: int) -> None:
    layer = Conv2D(backend, c, o, 3, 1, 1)
    layer.compute_dx = c > 1
    x = rs.standard_normal((b, c, hw, hw), dtype=cupy.float32)
    y = layer.forward(x, training=True)
    dy = rs.standard_normal(y.shape[::1], dtype=cupy.float32)
    dy = cupy.ascontiguousarray(dy.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # NHWC, as the layers give
    row(f"{name} forward (layer)", lambda: layer.forward(x, training=True))
    row(f"{name} backward (layer)", lambda: layer.backward(dy))
    dy2 = dy.transpose(0, 2, 3, 1).reshape(-1, o)
    cols = im2col(cupy, x, 3, 3, 1, 1).reshape(-1, 9 * c)
    row(f"{name} im2col", lambda: im2col(cupy, x, 3, 3, 1, 1))
    row(f"{name} dW = matmul(dy2.T, cols)", lambda: cupy.matmul(dy2.T, cols))
    dy3, cols3 = dy2.reshape(b, -1, o), cols.reshape(b, -1, 9 * c)
    row(f"{name} dW by image, batched, summed", lambda: cupy.matmul(dy3.transpose(0, 2, 1), cols3).sum(axis=0))
    row(f"{name} db = dy2.sum(axis=0)", lambda: dy2.sum(axis=0))
    ones = cupy.ones(dy2.shape[0], dtype=cupy.float32)
    row(f"{name} db = ones @ dy2", lambda: ones @ dy2)
    row(f"{name} db = matmul(dy2.T, ones)", lambda: cupy.matmul(dy2.T, ones))
    if c > 1:
        weights = cupy.ascontiguousarray(layer.params["W"].transpose(0, 2, 3, 1))
        row(f"{name} col2im_product", lambda: col2im_product(cupy, dy2, weights, x.shape, 1, 1))
        wrows = layer._weight_rows()
        row(f"{name} dcols = dy2 @ W (one product)", lambda: dy2 @ wrows)


def pool_parts(backend: Any, rs: Any, b: int, name: str, c: int, hw: int) -> None:
    pool = MaxPool2D(backend, 2)
    pool.relu_before = True
    x = cupy.maximum(rs.standard_normal((b, hw, hw, c), dtype=cupy.float32), 0).transpose(0, 3, 1, 2)
    y = pool.forward(x, training=True)
    dy = cupy.ascontiguousarray(rs.standard_normal(y.shape, dtype=cupy.float32))
    row(f"{name} forward (layer)", lambda: pool.forward(x, training=True))
    row(f"{name} backward (layer)", lambda: pool.backward(dy))
    xn = x.transpose(0, 2, 3, 1)
    row(
        f"{name} max of 4 strided views",
        lambda: cupy.maximum(
            cupy.maximum(xn[:, 0::2, 0::2], xn[:, 0::2, 1::2]), cupy.maximum(xn[:, 1::2, 0::2], xn[:, 1::2, 1::2])
        ),
    )
    row(f"{name} copy of x", lambda: xn.copy())


if __name__ == "__main__":
    main()
