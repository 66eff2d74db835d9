"""Where a training step goes, layer by layer: forward and backward seconds per batch for a config's
network on the CPU, with all cores and with one thread (nnx's own threads and BLAS's both limited
to one), so the last column says how well each part spreads over the cores.

Run: NNX_DATA_DIR=... python benchmarks/profile_layers.py [--config mnist_cnn] [--batches 30]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
from threadpoolctl import threadpool_limits

from nnx.api import build_model_for, build_optimizer
from nnx.backend import get_backend
from nnx.config import load_config
from nnx.data.mnist import load_mnist, resolve_data_dir
from nnx.nn import SoftmaxCrossEntropy
from nnx.preprocess import Preprocess


def profile(config_name: str, batches: int) -> dict[str, float]:
    config, _ = load_config(config_name)
    backend = get_backend("cpu", "float32")
    model = build_model_for(config, backend)
    optimizer = build_optimizer(config, model, backend)
    loss_fn = SoftmaxCrossEntropy(backend)
    pre = Preprocess.named(config.data.normalize)
    mnist = load_mnist(resolve_data_dir(), 0)
    batch = config.training.batch_size
    seconds: dict[str, float] = defaultdict(float)
    layers = model.logit_layers
    for b in range(batches + 3):  # 3 to warm up
        timed = b >= 3
        images = backend.asarray(mnist.train.images[b * batch : (b + 1) * batch])
        labels = backend.asarray(mnist.train.labels[b * batch : (b + 1) * batch], dtype=np.int64)
        model.set_random_key(0, 1, b)
        started = time.perf_counter()
        x = pre(images, backend)
        seconds["preprocess"] += (time.perf_counter() - started) * timed
        for i, layer in enumerate(layers):
            started = time.perf_counter()
            x = layer.forward(x, training=True)
            seconds[f"{i} {layer.kind} forward"] += (time.perf_counter() - started) * timed
        started = time.perf_counter()
        loss_fn.forward(x, labels)
        dy = loss_fn.backward()
        seconds["loss forward+backward"] += (time.perf_counter() - started) * timed
        for i in reversed(range(len(layers))):
            if dy is None:  # the first layer with parameters does not compute dL/dx
                break
            started = time.perf_counter()
            dy = layers[i].backward(dy)
            seconds[f"{i} {layers[i].kind} backward"] += (time.perf_counter() - started) * timed
        started = time.perf_counter()
        optimizer.step()
        seconds["optimizer step"] += (time.perf_counter() - started) * timed
    return {k: v / batches for k, v in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="mnist_cnn")
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    many = profile(args.config, args.batches)
    with threadpool_limits(limits=1):
        one = profile(args.config, args.batches)
    total_many, total_one = sum(many.values()), sum(one.values())
    print(f"| {args.config}, per batch | ms, all cores | ms, 1 thread | share of the step | speed-up from threads |")
    print("| --- | --- | --- | --- | --- |")
    for key in sorted(many, key=lambda k: -many[k]):
        print(f"| {key} | {many[key] * 1e3:.2f} | {one[key] * 1e3:.2f} | {many[key] / total_many:.0%} | "
              f"{one[key] / many[key]:.2f}x |")  # fmt: skip
    print(f"| total | {total_many * 1e3:.2f} | {total_one * 1e3:.2f} | 100% | {total_one / total_many:.2f}x |")


if __name__ == "__main__":
    main()
