"""Data-parallel training on this CPU: 1 process against 2 (mpiexec), and what one allreduce costs.

For the default MLP (a whole epoch) and configs/mnist_cnn.yaml's CNN (the first --batches batches,
scaled to an epoch), with the same global batch: seconds per epoch, and the allreduce of the flat
gradient buffer per step (seconds and bytes). Each rank runs with cores / ranks BLAS threads.

Run: NNX_DATA_DIR=... python benchmarks/parallel.py [--batches 60] [--json out.json]
(it starts `mpiexec -n 1` and `mpiexec -n 2` of itself with --worker).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

MODELS = {"mlp": ("mnist_mlp", 64), "cnn": ("mnist_cnn", 128)}


def worker(name: str, batches: int) -> None:
    from nnx.api import build_model_for, build_optimizer
    from nnx.backend import get_backend
    from nnx.config import load_config
    from nnx.data.mnist import Split, load_mnist, resolve_data_dir
    from nnx.optim import Schedule
    from nnx.parallel import MPIComm
    from nnx.preprocess import Preprocess
    from nnx.trainer import DeviceSplit, Trainer

    comm = MPIComm()
    config, _ = load_config(MODELS[name][0], [], {"training.augment.enabled": False})
    backend = get_backend("cpu", "float32")
    model = build_model_for(config, backend)
    trainer = Trainer(model, build_optimizer(config, model, backend), backend, Preprocess.named("standard"),
                      schedule=Schedule(**config.schedule.model_dump()), comm=comm)  # fmt: skip
    mnist = load_mnist(resolve_data_dir(), 5000)
    batch = config.training.batch_size
    n = batches * batch if batches else len(mnist.train)
    data = DeviceSplit(Split(mnist.train.images[:n], mnist.train.labels[:n]), backend)
    trainer.fit(
        DeviceSplit(Split(mnist.train.images[: 4 * batch], mnist.train.labels[: 4 * batch]), backend), None, 1, batch, 0
    )  # fmt: skip  (warm-up)
    comm.barrier()
    seconds = statistics.median(trainer.fit(data, None, 1, batch, r + 1).train_seconds for r in range(2))
    grads = model.flat_grads
    comm.barrier()
    timings = []
    for _ in range(30):
        started = time.perf_counter()
        comm.allreduce_sum(grads)
        timings.append(time.perf_counter() - started)
    if comm.is_root:
        scale = len(mnist.train) / n
        print(json.dumps({"model": name, "ranks": comm.size, "epoch_seconds": seconds * scale,
                          "steps_per_epoch": -(-len(mnist.train) // batch), "allreduce_seconds":
                          statistics.median(timings), "allreduce_bytes": int(grads.nbytes)}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=60, help="CNN: time this many batches, scaled to an epoch")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.batches if args.worker == "cnn" else 0)
        return
    from kernels import host_line  # (this script's folder is on sys.path)

    print(host_line(), flush=True)  # the machine these figures belong to, and no other
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    rows = []
    cores = os.cpu_count() or 1
    for name in MODELS:
        for ranks in (1, 2):
            threads = str(max(1, cores // ranks))
            env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
            command = [mpiexec, "-n", str(ranks), sys.executable, __file__, "--worker", name, "--batches",
                       str(args.batches)]  # fmt: skip
            out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"| model | ranks | s/epoch | speed-up | allreduce per step (bytes) | share of a step |  ({cores} cores)")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        one = next(r for r in rows if r["model"] == row["model"] and r["ranks"] == 1)
        step = row["epoch_seconds"] / row["steps_per_epoch"]
        share = row["allreduce_seconds"] / step if row["ranks"] > 1 else 0.0
        reduce = f"{row['allreduce_seconds'] * 1e6:.0f} us ({row['allreduce_bytes'] / 1e6:.2f} MB)"
        speedup = one["epoch_seconds"] / row["epoch_seconds"]
        cells = [row["model"], row["ranks"], f"{row['epoch_seconds']:.2f}", f"{speedup:.2f}x", reduce, f"{share:.1%}"]
        print("| " + " | ".join(map(str, cells)) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
