"""`nnx sweep FILE` (run trials, in this process or in N worker processes) and `nnx sweep show`."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from nnx.cli.common import stdout_console
from nnx.errors import ConfigError, NnxError

WORKER_WAIT_SECONDS = 120  # after Ctrl-C: a worker finishes its batch and records its trial
FORWARD_AFTER_SECONDS = 3  # a worker the terminal's Ctrl-C reached has stopped within a batch by then


def _prepare(file: Path, trials: int | None, storage: str | None, device: str | None, assignments: list[str],
             data_dir: Path | None):  # fmt: skip
    """Everything validated before anything is written: the sweep file, the base config with the
    overrides, every searched value, the data, the storage."""
    from nnx.api import resolve_config
    from nnx.data.mnist import missing_files, resolve_data_dir
    from nnx.sweep.spec import base_config, check_against_config, read_sweep, resolve_sweep_path
    from nnx.sweep.study import claim_folder, default_storage, open_storage, sweep_dir

    file = resolve_sweep_path(file)
    spec = read_sweep(file)
    if trials is not None:
        spec.trials = trials
    _refuse_searched(spec, assignments)
    overrides = {k: v for k, v in {"device": device, "data.dir": str(data_dir) if data_dir else None}.items() if v}
    start = base_config(spec, file)
    base, _ = resolve_config(start, overrides, assignments)
    check_against_config(spec, file, base, lambda extra: resolve_config(start, {**overrides, **extra}, assignments))
    folder = resolve_data_dir(None, base.data.dir)
    missing = missing_files(folder)
    if missing:
        raise NnxError(f"{folder}: missing {', '.join(missing)}; run `nnx data download` first (sweeps never download)")
    overrides["data.dir"] = str(folder.resolve())
    if storage is None:
        sweep_dir(spec.name).mkdir(parents=True, exist_ok=True)
        storage = default_storage(spec.name)

    def say(message: str) -> None:  # (on stderr: a worker's goes to its log)
        print(f"sweep {spec.name}: {message}", file=sys.stderr, flush=True)

    rdb = open_storage(storage, spec.heartbeat, patience=spec.storage_patience, on_retry=say)
    claim_folder(spec.name, storage)
    return file, spec, overrides, storage, rdb, base


def _refuse_searched(spec: Any, assignments: list[str]) -> None:
    """A --set on a key the sweep searches would be overridden by every trial's value, unsaid."""
    from nnx.config import parse_assignment

    for assignment in assignments:
        key, value = parse_assignment(assignment)
        for searched in spec.search:
            if _sets(key, value, searched):
                raise NnxError(
                    f"--set {assignment}: the sweep searches {searched}, whose value each trial sets; "
                    "take it out of --set or out of the search"
                )


def _sets(key: str, value: Any, searched: str) -> bool:
    """Whether `--set key=value` sets the dotted key `searched` (or a key within it)."""
    if key == searched or key.startswith(searched + "."):
        return True
    if not searched.startswith(key + "."):
        return False
    for part in searched[len(key) + 1 :].split("."):  # --set optimizer={lr: 0.5} sets optimizer.lr
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True


def worker_gpus(workers: int, device: str) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each local worker of a sweep on `device`: with gpu (or auto) and
    several GPUs visible, worker k gets the k-th of them (round robin), so that the workers share
    the GPUs instead of all training on the first. An explicit gpu:N, the CPU, or one GPU leave the
    environment as it is (None)."""
    from nnx.backend import gpu_count

    if device not in ("gpu", "auto") or workers < 2:
        return [None] * workers
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        visible = [d.strip() for d in listed.split(",") if d.strip()]
    else:
        visible = [str(i) for i in range(gpu_count())]
    if len(visible) < 2:
        return [None] * workers
    return [visible[k % len(visible)] for k in range(workers)]


def run_sweep(
    file: Path,
    trials: int | None,
    workers: int,
    storage: str | None,
    device: str | None,
    assignments: list[str],
    data_dir: Path | None,
    worker_id: int | None,
) -> None:
    from nnx.sweep.spec import base_config
    from nnx.sweep.study import Worker, count, open_study, shown_url, storage_faults, sweep_dir

    console = stdout_console()
    cores = os.cpu_count() or 1
    if workers > 4 * cores:  # before _prepare writes anything: thousands of processes are a typo
        raise NnxError(f"--workers {workers}: more than 4 a core ({cores} cores here) would only thrash; use fewer")
    given = file
    file, spec, overrides, url, rdb, base = _prepare(file, trials, storage, device, assignments, data_dir)
    # The command that continues this sweep: every setting it was given (its trials must share them).
    again = ["nnx", "sweep", str(given), *(["--workers", str(workers)] if workers > 1 else [])]
    again += _flags(shown_url(storage) if storage else None, device, data_dir, trials, assignments)
    continue_with = shlex.join(again)
    with storage_faults(spec.name, url):  # the storage failing midway: one line, not a traceback
        if worker_id is None:
            workers = _worker_count(workers, spec)
        study = open_study(spec, rdb, worker_id or 0, base=base.model_dump(mode="json"))
        metric = spec.metric
        if worker_id is None:
            console.print(
                f"sweep {spec.name}: {spec.trials} trials of {spec.base}, {metric} ({spec.direction}), sampler "
                f"{spec.sampler}, pruner {spec.pruner}, {workers} worker(s); storage {shown_url(url)}; "
                f"runs in {sweep_dir(spec.name)}/",
                markup=False,
            )

        def report(trial: Any, counts: Any) -> None:
            value = "" if trial.value is None else f": {metric} {trial.value:.4f}"
            params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
            state = trial.state.name.lower()
            why = trial.user_attrs.get("error") or trial.user_attrs.get("diverged")
            note = f" [{why}]" if why else ""
            console.print(
                f"trial {trial.number} {state}{value} ({params}){note} | {_progress(counts, spec)}", markup=False
            )

        if workers > 1 and worker_id is None:
            gpus = worker_gpus(workers, base.device)
            if any(gpus):
                console.print(f"workers' GPUs (CUDA_VISIBLE_DEVICES): {', '.join(map(str, gpus))}", markup=False)
            _run_workers(
                file, spec, gpus, url, device, assignments, data_dir, trials, study, report, console, continue_with
            )
        else:
            waited: list[int] = []

            def waiting(counts: Any) -> None:  # said once per number of trials waited for
                if worker_id is None and waited[-1:] != [counts.running]:
                    waited.append(counts.running)
                    console.print(
                        f"waiting for {counts.running} running trial(s): another worker's, or a stopped one's whose "
                        f"heartbeat has not yet gone stale (after {3 * spec.heartbeat} s it is run again here)",
                        markup=False,
                    )

            try:
                worker = Worker(spec, study, overrides, assignments, report, base_config(spec, file), waiting)
                counts = worker.run()
            except KeyboardInterrupt:
                if worker_id is None:
                    console.print(_stopped(spec, continue_with), markup=False)
                raise typer.Exit(130) from None
            if worker_id is None:
                done = f"done: {_progress(counts, spec)}; `nnx sweep show {spec.name}` for the table"
                console.print(done, markup=False)
        if worker_id is None:
            final = count(study)
            if final.finished == 0 and final.failed:
                raise NnxError(f"sweep {spec.name}: every trial failed; `nnx sweep show {spec.name}` says why")


def _run_workers(
    file, spec, gpus, url, device, assignments, data_dir, trials, study, report, console, continue_with
) -> None:
    """A worker process on this machine for each of `gpus` (its CUDA_VISIBLE_DEVICES, or None),
    sharing the study's storage; this one shows progress."""
    from nnx.sweep.study import count, sweep_dir

    args = [sys.executable, "-m", "nnx", "sweep", str(file), *_flags(url, device, data_dir, trials, assignments)]
    env = dict(os.environ)
    threads = str(max(1, (os.cpu_count() or 1) // len(gpus)))  # the cores shared out, not oversubscribed
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, threads)
    logs, procs = [], []
    for k, gpu in enumerate(gpus, start=1):
        log = sweep_dir(spec.name) / f"worker-{k}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        logs.append(log)
        worker_env = env if gpu is None else {**env, "CUDA_VISIBLE_DEVICES": gpu}
        with open(log, "ab") as out:
            procs.append(
                subprocess.Popen([*args, "--worker-id", str(k)], stdout=out, stderr=subprocess.STDOUT, env=worker_env)
            )
    # Trials that ended before this command (an earlier run of the same sweep) are not news.
    seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED", "FAIL")}

    def terminate(signum: int, frame: Any) -> None:
        # SIGTERM (docker stop, Slurm) reaches this process alone: stop as Ctrl-C does, passing
        # the stop on to the workers, instead of ending here and leaving them running.
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        while True:
            alive = [p for p in procs if p.poll() is None]
            counts = count(study)
            for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
                ended = trial.state.name in ("COMPLETE", "PRUNED", "FAIL") and not trial.user_attrs.get("surplus")
                if ended and trial.number not in seen:
                    seen.add(trial.number)
                    report(trial, counts)
            if not alive:
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reached the workers too, and they are stopping: a second SIGINT from
        # here would make them abort instead of recording their trials. A signal to this process
        # alone did not reach them: those still running after a grace period are passed it.
        grace = time.monotonic() + FORWARD_AFTER_SECONDS
        while time.monotonic() < grace and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + WORKER_WAIT_SECONDS
        for p in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
        console.print(_stopped(spec, continue_with), markup=False)
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    broken = [(k + 1, p.returncode, logs[k]) for k, p in enumerate(procs) if p.returncode not in (0, 130)]
    for k, code, log in broken:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        console.print(
            f"worker {k} exited with {code}: {lines[-1] if lines else '(no output)'} (log: {log})", markup=False
        )
    console.print(f"done: {_progress(count(study), spec)}; `nnx sweep show {spec.name}` for the table", markup=False)
    if broken:
        raise typer.Exit(1)


def _flags(
    storage: str | None, device: str | None, data_dir: Path | None, trials: int | None, assignments: list[str]
) -> list[str]:
    """The options a sweep's command passes on (to its workers, or to the command that continues it)."""
    flags = ["--storage", storage] if storage else []
    flags += ["--device", device] if device else []
    flags += ["--data-dir", str(data_dir)] if data_dir else []
    flags += ["--trials", str(trials)] if trials else []
    for assignment in assignments:
        flags += ["--set", assignment]
    return flags


def _worker_count(asked: int, spec: Any) -> int:
    """--workers, but never more than the trials to finish: a worker without a trial would start
    and stop for nothing."""
    from nnx.sweep.study import budget

    return min(asked, budget(spec))


def _stopped(spec, continue_with: str) -> str:
    return (
        f"sweep {spec.name} stopped: finished trials are kept and a stopped one is queued again; "
        f"to continue: {continue_with}"
    )


def _progress(counts: Any, spec: Any) -> str:
    from nnx.sweep.study import budget

    best = "" if counts.best_value is None else f" | best {counts.best_value:.4f} (trial {counts.best_number})"
    return f"{counts.finished}/{budget(spec)} done (pruned {counts.pruned}, failed {counts.failed}){best}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_show(name: str | None, storage: str | None, export: Path | None, report: Path | None) -> None:
    from nnx.atomic import check_replaceable, write_atomic
    from nnx.sweep.report import best_config, trial_rows, write_report
    from nnx.sweep.study import default_storage, import_optuna, open_storage, storage_faults, sweep_dir

    optuna = import_optuna()
    console = stdout_console()
    if report is not None:
        check_replaceable(report, "--report")
    if export is not None and export.exists():
        raise NnxError(f"--export {export}: the file exists; choose another name or remove it")
    if storage is None:
        if name is None:
            raise ConfigError("nnx sweep show: give the sweep's NAME, or --storage URL")
        storage = default_storage(name)
    with storage_faults(name or "show", storage):
        rdb = open_storage(storage, create=False, claims=False)
        names = [s.study_name for s in optuna.study.get_all_study_summaries(rdb, include_best_trial=False)]
        if name is None:
            if len(names) != 1:
                raise ConfigError(f"--storage holds {len(names)} sweeps ({', '.join(names) or 'none'}); name one")
            name = names[0]
        if name not in names:
            raise ConfigError(f"no sweep named {name} in this storage (it has: {', '.join(names) or 'none'})")
        study = optuna.load_study(study_name=name, storage=rdb)
        rows = trial_rows(study)
        metric = study.user_attrs.get("sweep", {}).get("metric", "value")
        keys = sorted({k for r in rows for k in r.params})
        # Columns headed by each searched key's last part (lr, not optimizer.lr) where that is unambiguous,
        # no rules: a trial a line in 80 columns; only the note folds.
        last = [k.rsplit(".", 1)[-1] for k in keys]
        headers = last if len(set(last)) == len(last) else keys
        title = f"sweep {name}: {metric}, {study.direction.name.lower()}"
        table = Table(title=title, box=None, padding=(0, 1, 0, 0), pad_edge=False)
        for column in ["trial", "state", metric, *headers, "epochs", "note"]:
            table.add_column(column, overflow="fold", no_wrap=column != "note")
        for r in rows:
            value = "" if r.value is None else f"{r.value:.4f}"
            params = [_short(r.params[k]) if k in r.params else "" for k in keys]
            table.add_row(str(r.number), r.state.lower(), value, *params, str(r.epochs or ""), r.note)
        console.print(table)
        try:
            best = best_config(study)
        except NnxError as exc:
            best = None
            console.print(str(exc), markup=False)
        if best is not None:
            console.print("best config:", markup=False)
            console.print(best, markup=False, end="")
        if export is not None:
            if best is None:
                raise NnxError(f"--export {export}: nothing to export yet")
            write_atomic(export, best.encode())
            console.print(f"best config written to {export}: nnx train -c {export}", markup=False)
        path = write_report(study, report or sweep_dir(name) / "report.html")
        console.print(f"report: {path}", markup=False)
