"""What pruning buys a sweep: the same 16-trial random search without pruning, with the median
pruner and with successive halving.

The random sampler proposes the same 16 configs in both sweeps (its draws do not depend on the
results), so the difference is the pruning alone: total training epochs, wall-clock, and the best
validation accuracy found. The search is the default MLP's learning rate (log-uniform over four
decades, so many proposals are poor), width and weight decay, 8 epochs each, on MNIST.

Run: NNX_DATA_DIR=... python benchmarks/sweep.py [--trials 16] [--epochs 8] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SEARCH = {
    "optimizer.lr": {"log_uniform": [1.0e-4, 1.0]},
    "model.hidden": {"choice": [[32], [64], [128]]},
    "optimizer.weight_decay": {"uniform": [0.0, 1.0e-3]},
}


def run(pruner: str, trials: int, epochs: int, workers: int, folder: Path) -> dict:
    import optuna

    name = f"bench-{pruner}"
    spec = {"name": name, "base": "mnist_mlp", "trials": trials, "sampler": "random", "pruner": pruner,
            "search": SEARCH}  # fmt: skip
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    started = time.perf_counter()
    command = [sys.executable, "-m", "nnx", "sweep", f"{name}.yaml", "--workers", str(workers),
               "--set", f"training.epochs={epochs}"]  # fmt: skip
    subprocess.run(command, cwd=folder, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ))
    seconds = time.perf_counter() - started
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'runs' / name / 'study.db'}")
    trials_done = [t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]
    return {
        "pruner": pruner,
        "epochs": sum(t.user_attrs.get("epochs", 0) for t in trials_done),
        "seconds": seconds,
        "pruned": sum(t.state.name == "PRUNED" for t in trials_done),
        "best": study.best_value,
        "best_params": study.best_params,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(p, args.trials, args.epochs, args.workers, Path(tmp)) for p in ("none", "median", "halving")]
    base = rows[0]
    print(
        f"| {args.trials} trials x {args.epochs} epochs | training epochs | wall-clock s | pruned | best val accuracy |"
    )
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| pruner {r['pruner']} | {r['epochs']} | {r['seconds']:.1f} | {r['pruned']} | {r['best']:.2%} |")
    for pruned in rows[1:]:
        saved = 1 - pruned["epochs"] / base["epochs"]
        print(
            f"{pruned['pruner']}: saved {saved:.0%} of the epochs and {1 - pruned['seconds'] / base['seconds']:.0%} "
            f"of the wall-clock; best val accuracy {pruned['best']:.2%} vs {base['best']:.2%} "
            f"({(pruned['best'] - base['best']) * 100:+.2f} points)"
        )


if __name__ == "__main__":
    from kernels import host_line  # (this script's folder is on sys.path)

    print(host_line(), flush=True)  # the machine these figures belong to, and no other
    main()
