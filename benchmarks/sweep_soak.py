"""Soak a sweep in faults: its workers SIGKILLed at random moments, or the whole sweep, each time
continued with the same command; then what the study and the trials' folders hold.

The goal is every trial exactly once. Reported, each with its goal:
- kills survived: the kills made, all followed by a continue that finished the sweep;
- lost: the budget less the finished trials once the sweep says done (0);
- past the budget: finished trials beyond it (0);
- duplicates: finished trials that ran a configuration another finished trial ran (0);
- retried twice: a killed trial run again more than once (0);
- incomplete: finished trials whose run folder is not a readable, finished run (0).
It exits 1 when any of these misses its goal.

Run: python benchmarks/sweep_soak.py [--trials 24] [--workers 3] [--kills 8] [--seed 0]
       [--storage postgresql://USER@HOST/DB] [--data-dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

NAME = "soak"
SEARCH = {"optimizer.lr": {"log_uniform": [0.001, 0.3]}, "optimizer.momentum": {"uniform": [0.0, 0.95]}}
GRID = {"optimizer.lr": {"choice": [0.003, 0.01, 0.03, 0.1, 0.3]}, "optimizer.momentum": {"choice": [0.0, 0.5, 0.9]}}
# Short trials (a few tenths of a second of training): a kill lands as often between trials, where
# they are claimed and recorded, as within one.
SETTINGS = ["training.epochs=3", "data.limit=3000", "training.validation=500", "model.hidden=[16]"]


def children(pid: int) -> list[int]:
    """The processes `pid` started (its sweep workers), from Linux's /proc."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def soak(trials: int, workers: int, kills: int, seed: int, storage: str | None, data_dir: str | None,
         folder: Path, sampler: str = "random", settings: list[str] = ()) -> dict[str, Any]:  # fmt: skip
    """Runs the sweep until it says done, killing it `kills` times on the way; returns the counts."""
    rng = random.Random(seed)
    spec = {"name": NAME, "base": "mnist_mlp", "trials": trials, "sampler": sampler, "pruner": "none",
            "heartbeat": 1, "search": GRID if sampler == "grid" else SEARCH}  # fmt: skip
    (folder / f"{NAME}.yaml").write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "nnx", "sweep", f"{NAME}.yaml", "--workers", str(workers)]
    command += ["--storage", storage] if storage else []
    command += ["--data-dir", data_dir] if data_dir else []
    given = {setting.split("=", 1)[0] for setting in settings}
    for setting in [s for s in SETTINGS if s.split("=", 1)[0] not in given] + list(settings):
        command += ["--set", setting]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    made, runs, last = [], 0, None
    started = time.monotonic()
    while runs < kills + 6:
        runs += 1
        proc = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)  # fmt: skip
        while len(made) < kills and proc.poll() is None:
            time.sleep(rng.uniform(0.5, 4.0))
            if proc.poll() is not None:
                break
            alive = children(proc.pid)
            if rng.random() < 0.7 and alive:  # one worker: the others go on and retry its trial
                victim = rng.choice(alive)
                os.kill(victim, signal.SIGKILL)
                made.append("worker")
            else:  # the whole sweep (a machine lost): the next command continues it
                os.killpg(proc.pid, signal.SIGKILL)
                made.append("sweep")
                break
        out, _ = proc.communicate(timeout=600)
        last = (proc.returncode, out)
        if len(made) >= kills and proc.returncode == 0:
            break
    seconds = time.monotonic() - started
    return {**check(folder, trials, storage), "kills": len(made), "kinds": made, "commands": runs,
            "last_exit": last[0], "last_line": last[1].strip().splitlines()[-1] if last[1].strip() else "",
            "seconds": round(seconds, 1)}  # fmt: skip


def check(folder: Path, budget: int, storage: str | None) -> dict[str, Any]:
    """What the study holds against what exactly-once asks of it."""
    import optuna

    import nnx
    from nnx.errors import NnxError
    from nnx.runs import read_run

    url = storage or f"sqlite:///{folder / 'runs' / NAME / 'study.db'}"
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    trials = optuna.load_study(study_name=NAME, storage=url).get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    configs = [tuple(sorted(t.params.items())) for t in finished]
    retried: dict[int, int] = {}
    for t in trials:
        of = t.system_attrs.get("failed_trial", t.user_attrs.get("retry_of"))
        if of is not None:
            retried[of] = retried.get(of, 0) + 1
    incomplete = []
    for t in finished:
        try:
            run_dir = folder / t.user_attrs["run_dir"]
            nnx.load(run_dir / "model.npz")  # the model file whole and safe to load
            if "test_accuracy" not in read_run(run_dir)["summary"]:
                incomplete.append(t.number)
        except (KeyError, NnxError, OSError):
            incomplete.append(t.number)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {
        "budget": budget,
        "finished": len(finished),
        "lost": max(0, budget - len(finished)),
        "past_budget": max(0, len(finished) - budget),
        "duplicates": len(configs) - len(set(configs)),
        "retried_twice": sum(1 for n in retried.values() if n > 1),
        "incomplete": incomplete,
        "states": states,
    }


def failed_goals(result: dict[str, Any]) -> list[str]:
    goals = ["lost", "past_budget", "duplicates", "retried_twice"]
    missed = [f"{key} {result[key]}" for key in goals if result[key]]
    if result["incomplete"]:
        missed.append(f"incomplete {result['incomplete']}")
    if result["last_exit"] != 0:
        missed.append(f"the last command exited {result['last_exit']}: {result['last_line']}")
    return missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sampler",
        choices=["random", "grid"],
        default="random",
        help="grid: a 15-point grid (with --trials 15 or more, every point once)",
    )
    parser.add_argument("--storage", help="a PostgreSQL study (default: the sweep's own SQLite file)")
    parser.add_argument("--data-dir")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"a trial setting, in place of the default one of that key ({', '.join(SETTINGS)})",
    )
    parser.add_argument("--json", action="store_true", help="the result as one JSON line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = soak(args.trials, args.workers, args.kills, args.seed, args.storage, args.data_dir, Path(tmp),
                      args.sampler, args.set)  # fmt: skip
    missed = failed_goals(result)
    if args.json:
        print(json.dumps({**result, "missed": missed}))
    else:
        print(host_line())
        storage = "PostgreSQL" if args.storage else "SQLite"
        print(f"{result['budget']} trials, {args.workers} workers, {storage}: {result['kills']} kills "
              f"({result['kinds'].count('worker')} of a worker, {result['kinds'].count('sweep')} of the sweep), "
              f"{result['commands']} commands, {result['seconds']} s")  # fmt: skip
        print("| kills survived | lost | past the budget | duplicates | retried twice | incomplete |")
        print("| --- | --- | --- | --- | --- | --- |")
        survived = result["kills"] if result["last_exit"] == 0 else 0
        print(f"| {survived} | {result['lost']} | {result['past_budget']} | {result['duplicates']} | "
              f"{result['retried_twice']} | {len(result['incomplete'])} |")  # fmt: skip
        print(f"trial states: {result['states']}")
        print("goals met" if not missed else "MISSED: " + "; ".join(missed))
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    from kernels import host_line  # (this script's folder is on sys.path)

    main()
