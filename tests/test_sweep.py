"""`nnx sweep` on Optuna: bad sweep files, local workers on the embedded database, pruning, Ctrl-C
and a killed worker, and two workers on one PostgreSQL study (CI starts a local server)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from nnx.runs import read_run

optuna = pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "training.validation=100", "--set", "model.hidden=[16]"]


def sweep_file(folder: Path, name: str, trials: int, search: dict, **extra) -> Path:
    spec = {"name": name, "base": "mnist_mlp", "trials": trials, "sampler": "random", "search": search, **extra}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def nnx(*args, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    command = [sys.executable, "-m", "nnx", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


def start(*args, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    environment = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    command = [sys.executable, "-m", "nnx", *map(str, args)]
    return subprocess.Popen(
        command, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def load(cwd: Path, name: str, storage: str | None = None):
    url = storage or f"sqlite:///{cwd / 'runs' / name / 'study.db'}"
    return optuna.load_study(study_name=name, storage=url)


def states(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        if not t.user_attrs.get("surplus"):
            out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"search": {"optimizer.lrr": {"uniform": [0.1, 0.2]}}}, "search.optimizer.lrr: 0.1 is refused by the config"),
        ({"search": {"model.activation": {"uniform": [0.1, 0.2]}}}, "search.model.activation: 0.1 is refused"),
        ({"search": {"optimizer.lr": {"log_uniform": [0, 0.1]}}}, "log_uniform needs 0 < low"),
        ({"search": {"optimizer.lr": {"uniform": [0.2, 0.1]}}}, "uniform needs low < high"),
        ({"search": {"optimizer.lr": {"uniform": [0.1, 0.2], "choice": [1]}}}, "give exactly one of"),
        ({"search": {}}, "search: Dictionary should have at least 1 item"),
        ({"search": {"optimizer.lr": {"uniform": [0.1, 0.2]}}, "metric": "accuracy"}, "metric: Input should be"),
        ({"search": {"optimizer.lr": {"uniform": [0.1, 0.2]}}, "sampler": "grid"}, "sampler grid needs choice lists"),
        ({"search": {"optimizer.lr": {"uniform": [0.1, 0.2]}}, "bogus": 1}, "bogus: unknown key"),
        ({"search": {"optimizer.lr": {"uniform": [0.1, 0.2]}}, "name": "../x"}, "name: use letters, digits"),
    ],
)
def test_a_bad_sweep_file_is_one_line_and_writes_nothing(tiny_mnist: Path, tmp_path: Path, spec, message) -> None:
    raw = {"name": "bad", "trials": 2, **spec}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    result = nnx("sweep", "s.yaml", "--data-dir", tiny_mnist, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: s.yaml: ") and message in lines[0], lines
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "text,message",
    [("[" * 3000, "nested too deeply to read"), ("trials: " + "9" * 5000, "a value YAML cannot convert")],
)
def test_a_sweep_file_yaml_cannot_load_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    from nnx.errors import ConfigError
    from nnx.sweep.spec import read_sweep

    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(ConfigError, match=f"s.yaml: {message}"):
        read_sweep(tmp_path / "s.yaml")


def test_a_set_on_a_searched_key_is_refused_not_overridden(tiny_mnist: Path, tmp_path: Path) -> None:
    """Every trial sets the searched keys: a --set of one was silently replaced by the trials' values."""
    from nnx.cli.sweep_cmd import _sets

    path = sweep_file(tmp_path, "clash", 2, {"optimizer.lr": {"log_uniform": [0.001, 0.1]}})
    result = nnx("sweep", path, "--data-dir", tiny_mnist, *TINY, "--set", "optimizer.lr=0.5", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == (
        "error: --set optimizer.lr=0.5: the sweep searches optimizer.lr, whose value each trial sets; "
        "take it out of --set or out of the search\n"
    )
    assert not (tmp_path / "runs").exists()
    assert _sets("optimizer", {"lr": 0.5, "name": "adam"}, "optimizer.lr")  # a section that holds it
    assert not _sets("optimizer", {"name": "adam"}, "optimizer.lr")  # one that does not
    assert _sets("model.hidden", [8], "model.hidden") and not _sets("optimizer.lr_min", 1, "optimizer.lr")


def test_a_sweeps_base_file_is_found_beside_the_sweep_file(tiny_mnist: Path, tmp_path: Path) -> None:
    """`base: small.yaml` in experiments/sweep.yaml: beside it, as a config file's own `base:` is
    read (it was looked for in the working directory only)."""
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "small.yaml").write_text("base: mnist_mlp\nmodel: {hidden: [8]}\ntraining: {epochs: 1}\n")
    path = sweep_file(folder, "beside", 1, {"optimizer.lr": {"uniform": [0.01, 0.05]}}, base="small.yaml")
    result = nnx("sweep", path, "--data-dir", tiny_mnist, "--set", "training.validation=100", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    run = read_run(tmp_path / "runs" / "beside" / "trial-0000")
    assert run["summary"]["model_description"] == "784-8-10" and run["config"]["name"] == "small"


def test_trial_and_worker_counts_are_bounded_before_anything_starts(tiny_mnist: Path, tmp_path: Path) -> None:
    path = sweep_file(tmp_path, "s", 2, {"optimizer.lr": {"uniform": [0.01, 0.1]}})
    for args, message in [
        (["--trials", "0"], "Invalid value for '--trials'"),
        (["--trials", "-5"], "Invalid value for '--trials'"),
        (["--workers", "100000"], "--workers 100000: more than 4 a core"),
    ]:
        result = nnx("sweep", path, "--data-dir", tiny_mnist, *args, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert not (tmp_path / "runs").exists()


def test_no_more_workers_start_than_trials_to_finish() -> None:
    from nnx.cli.sweep_cmd import _worker_count
    from nnx.sweep.spec import SweepSpec

    spec = SweepSpec.model_validate({"name": "s", "trials": 2, "search": {"optimizer.lr": {"uniform": [0.1, 0.2]}}})
    assert [_worker_count(k, spec) for k in (1, 2, 3)] == [1, 2, 2]


def test_bad_storage_metric_and_data_are_refused_before_anything_is_written(tiny_mnist: Path, tmp_path: Path) -> None:
    path = sweep_file(tmp_path, "s", 2, {"optimizer.lr": {"uniform": [0.01, 0.1]}})
    cases = [
        (["--storage", "postgresql://me:secret@127.0.0.1:1/none"], "cannot open (connection"),
        (["--storage", "mysql://x/y"], "unsupported (use sqlite:///PATH or postgresql://"),
        (["--set", "training.validation=0"], "metric val_accuracy: the runs have no validation split"),
        (["--set", "optimizer.lr=-1"], "optimizer.lr"),
    ]
    for extra, message in cases:
        result = nnx("sweep", path, "--data-dir", tiny_mnist, *extra, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "secret" not in result.stderr and "Traceback" not in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = nnx("sweep", path, "--data-dir", empty, cwd=tmp_path)
    assert result.returncode == 2 and "missing" in result.stderr and "never download" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.heavy(22)
def test_two_local_workers_share_the_embedded_study_and_the_best_config_reproduces(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    search = {"optimizer.lr": {"log_uniform": [0.005, 0.2]}, "training.batch_size": {"choice": [32, 64]}}
    path = sweep_file(tmp_path, "two", 6, search, pruner="none")
    one_thread = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    result = nnx("sweep", path, "--workers", "2", "--data-dir", tiny_mnist, *TINY, "--set", "training.epochs=3",
                 cwd=tmp_path, env=one_thread)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "done: 6/6 done (pruned 0, failed 0)" in result.stdout
    study = load(tmp_path, "two")
    trials = [t for t in study.get_trials() if not t.user_attrs.get("surplus")]
    assert states(study) == {"COMPLETE": 6}
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers) == 6
    run_dirs = sorted(p.name for p in (tmp_path / "runs" / "two").iterdir() if p.name.startswith("trial-"))
    assert run_dirs == [f"trial-{n:04d}" for n in sorted(numbers)]
    for run in run_dirs:  # each an ordinary run directory
        assert {"config.yaml", "metrics.jsonl", "model.npz", "summary.json"} <= {
            p.name for p in (tmp_path / "runs" / "two" / run).iterdir()
        }
    logs = [(tmp_path / "runs" / "two" / f"worker-{k}.log").read_text() for k in (1, 2)]
    assert all("Traceback" not in log for log in logs)

    shown = nnx("sweep", "show", "two", "--export", "best.yaml", cwd=tmp_path, env={"COLUMNS": "80"})
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    columns = ["trial", "state", "val_accuracy", "lr", "batch_size", "epochs", "note"]  # the keys' last parts
    header = next(i for i, line in enumerate(lines) if line.split() == columns)
    trial_lines = lines[header + 1 : header + 7]  # one line a trial in 80 columns
    assert sorted(int(line.split()[0]) for line in trial_lines) == sorted(numbers), shown.stdout
    assert all(line.split()[1] == "complete" and len(line) <= 80 for line in trial_lines), shown.stdout
    assert (tmp_path / "runs" / "two" / "report.html").is_file() and "best config written to best.yaml" in shown.stdout
    again = nnx("sweep", "show", "two", "--export", "best.yaml", cwd=tmp_path)
    assert again.returncode == 2 and "the file exists" in again.stderr  # never overwritten silently
    (tmp_path / "mine.html").write_text("my notes")
    mine = nnx("sweep", "show", "two", "--report", "mine.html", cwd=tmp_path)
    assert mine.returncode == 2 and "--report mine.html: the file exists and nnx did not write it" in mine.stderr
    assert (tmp_path / "mine.html").read_text() == "my notes"
    for _ in range(2):  # a report nnx wrote is written again
        assert nnx("sweep", "show", "two", "--report", "ours.html", cwd=tmp_path).returncode == 0
    # Same thread count as the workers: CPU runs are bitwise reproducible for a given one.
    rerun = nnx("train", "-q", "-c", "best.yaml", "--data-dir", tiny_mnist, "--out", "again", cwd=tmp_path,
                env=one_thread)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    history = [json.loads(line) for line in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["val_accuracy"] == study.best_value


def test_a_bad_learning_rate_range_gets_pruned_and_keeps_its_partial_run(tiny_mnist: Path, tmp_path: Path) -> None:
    path = sweep_file(tmp_path, "prune", 12, {"optimizer.lr": {"choice": [0.05, 0.00001]}}, pruner="median")
    result = nnx("sweep", path, "--data-dir", tiny_mnist, *TINY, "--set", "training.epochs=4", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    study = load(tmp_path, "prune")
    pruned = [t for t in study.get_trials() if t.state.name == "PRUNED"]
    assert pruned and all(t.params["optimizer.lr"] == 0.00001 for t in pruned)
    assert states(study)["COMPLETE"] + len(pruned) == 12
    for t in pruned:
        run = Path(tmp_path / t.user_attrs["run_dir"])
        summary = json.loads((run / "summary.json").read_text())
        assert summary["interrupted"] and summary["epochs"] < 4 and (run / "checkpoint.npz").is_file()
    assert " pruned" in result.stdout


@pytest.mark.heavy(12)
def test_ctrl_c_stops_cleanly_and_the_same_command_continues(tiny_mnist: Path, tmp_path: Path) -> None:
    path = sweep_file(tmp_path, "stop", 3, {"optimizer.lr": {"uniform": [0.01, 0.05]}}, pruner="none")
    args = ["sweep", path, "--data-dir", tiny_mnist, *TINY, "--set", "training.epochs=200"]
    proc = start(*args, cwd=tmp_path)
    wait_for(lambda: (tmp_path / "runs" / "stop" / "trial-0000" / "metrics.jsonl").is_file())
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "stopped" in output and "Traceback" not in output
    (hint,) = [line.split("to continue: ", 1)[1] for line in output.splitlines() if "to continue: " in line]
    assert "--set training.epochs=200" in hint and "--data-dir" in hint  # every flag the trials share
    study = load(tmp_path, "stop")
    first = study.get_trials()[0]
    assert first.state.name == "FAIL" and first.user_attrs.get("interrupted")
    waiting = [t for t in study.get_trials() if t.state.name == "WAITING"]
    assert len(waiting) == 1 and waiting[0].system_attrs["fixed_params"] == first.params  # queued again

    # Other fixed settings would make the trials incomparable: refused, naming them.
    changed = nnx(*args[:-1], "training.epochs=2", cwd=tmp_path)
    assert changed.returncode == 2, changed.stdout + changed.stderr
    assert "error: sweep stop: its trials ran with other settings than these (training.epochs 200 -> 2)" in (
        changed.stderr
    )
    assert changed.stderr.count("\n") == 1 and states(load(tmp_path, "stop"))["WAITING"] == 1
    result = nnx(*shlex.split(hint)[1:], cwd=tmp_path)  # the printed command continues, as printed
    assert result.returncode == 0, result.stdout + result.stderr
    study = load(tmp_path, "stop")
    assert states(study) == {"FAIL": 1, "COMPLETE": 3}
    retried = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == 0]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE" and retried[0].params == first.params


@pytest.mark.heavy(14)
def test_ctrl_c_in_a_terminal_stops_every_worker_and_queues_their_trials(tiny_mnist: Path, tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the whole process group (the sweep and its workers at once):
    within seconds every worker stops, the running trials are queued again and count as no
    failure, the message says so, and the printed command finishes the budget exactly."""
    from nnx.sweep.study import count

    path = sweep_file(tmp_path, "group", 4, {"optimizer.lr": {"uniform": [0.01, 0.05]}}, pruner="none")
    args = ["sweep", path, "--workers", 2, "--data-dir", tiny_mnist, *TINY, "--set", "training.epochs=300"]
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "nnx", *map(str, args)]
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    # As from a terminal: its own process group, and SIGINT handled (pytest-xdist's workers, whose
    # children we are, ignore it, and an ignored signal stays ignored in the children).
    proc = subprocess.Popen(command, cwd=tmp_path, env=environment, start_new_session=True, **output,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    runs = tmp_path / "runs" / "group"
    wait_for(lambda: len(list(runs.glob("trial-*/metrics.jsonl"))) >= 2)  # both workers are training
    os.killpg(proc.pid, signal.SIGINT)
    started = time.monotonic()
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130 and time.monotonic() - started < 30, output
    assert "Traceback" not in output and "a stopped one is queued again" in output
    study = load(tmp_path, "group")
    stopped = [t for t in study.get_trials() if t.state.name == "FAIL"]
    assert len(stopped) == 2, [(t.number, t.user_attrs) for t in stopped]
    assert all(t.user_attrs.get("interrupted") for t in stopped), [(t.number, t.user_attrs) for t in stopped]
    assert count(study).failed == 0 and count(study).running == 0
    queued = [t for t in study.get_trials() if t.state.name == "WAITING"]
    assert sorted(t.user_attrs["retry_of"] for t in queued) == sorted(t.number for t in stopped)
    (hint,) = [line.split("to continue: ", 1)[1] for line in output.splitlines() if "to continue: " in line]
    result = nnx(*shlex.split(hint)[1:], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    study = load(tmp_path, "group")
    complete = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and len({t.params["optimizer.lr"] for t in complete}) == 4
    # Each finished trial's run is complete; the stopped ones keep their partial runs, nothing else.
    assert all((runs / f"trial-{t.number:04d}" / "model.npz").is_file() for t in complete)
    assert sorted(p.name for p in runs.glob("trial-*")) == sorted(f"trial-{t.number:04d}" for t in complete + stopped)


def test_a_sweep_continues_from_another_machines_data_folder_and_device(tiny_mnist: Path, tmp_path: Path) -> None:
    """Where a worker finds its data and which device it trains on may differ between machines
    sharing a study; only the settings its trials share are compared."""
    path = sweep_file(tmp_path, "moved", 1, {"optimizer.lr": {"uniform": [0.01, 0.05]}})
    first = nnx("sweep", path, "--data-dir", tiny_mnist, *TINY, "--set", "training.epochs=1", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    copy = shutil.copytree(tiny_mnist, tmp_path / "elsewhere")
    args = ["--data-dir", copy, "--device", "cpu", "--trials", 2, *TINY, "--set", "training.epochs=1"]
    again = nnx("sweep", path, *args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert states(load(tmp_path, "moved")) == {"COMPLETE": 2}


def test_sigterm_to_a_sweep_stops_its_workers_too(tiny_mnist: Path, tmp_path: Path) -> None:
    """SIGTERM (docker stop, Slurm) reaches the sweep's own process alone: it ended, and its
    workers trained on without it."""
    path = sweep_file(tmp_path, "term", 4, {"optimizer.lr": {"uniform": [0.01, 0.05]}}, pruner="none")
    proc = start("sweep", path, "--workers", 2, "--data-dir", tiny_mnist, *TINY, "--set", "training.epochs=500",
                 cwd=tmp_path)  # fmt: skip
    trials = tmp_path / "runs" / "term"
    wait_for(lambda: len(list(trials.glob("trial-*/metrics.jsonl"))) == 2)  # both workers training
    proc.terminate()
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "stopped" in output and "Traceback" not in output

    def workers() -> list[str]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "--worker-id" in cmdline and str(path) in cmdline:
                found.append(cmdline)
        return found

    wait_for(lambda: not workers(), seconds=30)
    assert all(t.state.name != "RUNNING" for t in load(tmp_path, "term").get_trials())


def test_local_workers_share_the_gpus_round_robin(monkeypatch: pytest.MonkeyPatch) -> None:
    """--workers 4 --device gpu on a 2-GPU machine put every worker on GPU 0."""
    import nnx.backend
    from nnx.cli.sweep_cmd import worker_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 5,7")
    assert worker_gpus(4, "gpu") == ["2", "5", "7", "2"] and worker_gpus(2, "auto") == ["2", "5"]
    for device in ("cpu", "gpu:1"):  # the CPU, or a GPU the user named: left alone
        assert worker_gpus(3, device) == [None] * 3
    assert worker_gpus(1, "gpu") == [None]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # one GPU: nothing to share out
    assert worker_gpus(2, "gpu") == [None, None]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(nnx.backend, "gpu_count", lambda: 2)
    assert worker_gpus(3, "gpu") == ["0", "1", "0"]


def test_the_workers_are_given_their_gpus(tiny_mnist: Path, tmp_path: Path) -> None:
    path = sweep_file(tmp_path, "gpus", 2, {"optimizer.lr": {"uniform": [0.01, 0.05]}}, pruner="none")
    # No GPU here: auto trains on the CPU, but the sharing out is decided (and said) all the same.
    result = nnx("sweep", path, "--workers", 2, "--device", "auto", "--data-dir", tiny_mnist, *TINY,
                 "--set", "training.epochs=1", cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": "5,7"})  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "workers' GPUs (CUDA_VISIBLE_DEVICES): 5, 7" in result.stdout
    assert states(load(tmp_path, "gpus")) == {"COMPLETE": 2}


def kill_mid_trial(path: Path, name: str, tiny_mnist: Path, tmp_path: Path) -> list:
    """Start a one-worker sweep of long trials, SIGKILL it while its first trial trains, and return
    the command's arguments (the same command continues it)."""
    args = ["sweep", path, "--data-dir", tiny_mnist, *TINY, "--set", "training.epochs=200"]
    proc = start(*args, cwd=tmp_path)
    wait_for(lambda: (tmp_path / "runs" / name / "trial-0000" / "metrics.jsonl").is_file())
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    return args


@pytest.mark.heavy(10)
def test_a_killed_worker_leaves_its_trial_failed_and_retried(tiny_mnist: Path, tmp_path: Path) -> None:
    path = sweep_file(tmp_path, "kill", 2, {"optimizer.lr": {"uniform": [0.01, 0.05]}}, pruner="none", heartbeat=1)
    args = kill_mid_trial(path, "kill", tiny_mnist, tmp_path)
    killed = load(tmp_path, "kill").get_trials()[0]
    assert killed.state.name == "RUNNING"
    time.sleep(4)  # three heartbeats of silence: stale
    result = nnx(*args, cwd=tmp_path)  # the same command continues
    assert result.returncode == 0, result.stdout + result.stderr
    study = load(tmp_path, "kill")
    trials = study.get_trials()
    assert trials[0].state.name == "FAIL"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].params == trials[0].params and retries[0].state.name == "COMPLETE"
    assert states(study) == {"FAIL": 1, "COMPLETE": 2}


@pytest.mark.heavy(15)
def test_continuing_before_a_killed_worker_s_heartbeat_is_stale_waits_then_retries(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    """The same command run again at once after a crash: the dead worker's trial still looks
    RUNNING (its heartbeat is not yet stale), so the sweep waits for it, then runs its retry:
    never "done" while a trial of the budget is running."""
    # heartbeat 3: stale after 9 s, well after the continuing command has started, even on a busy machine
    path = sweep_file(tmp_path, "soon", 2, {"optimizer.lr": {"uniform": [0.01, 0.05]}}, pruner="none", heartbeat=3)
    args = kill_mid_trial(path, "soon", tiny_mnist, tmp_path)
    result = nnx(*args, cwd=tmp_path)  # at once: no sleep until the heartbeat is stale
    assert result.returncode == 0, result.stdout + result.stderr
    assert "waiting for 1 running trial(s)" in result.stdout
    study = load(tmp_path, "soon")
    assert states(study) == {"FAIL": 1, "COMPLETE": 2}
    retries = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert "2/2 done" in result.stdout.strip().splitlines()[-1]


def test_a_trial_taken_by_a_worker_killed_before_its_first_heartbeat_is_retried(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    """A worker killed between taking a trial and its first heartbeat leaves a RUNNING trial with
    no heartbeat, which Optuna never finds stale: the sweep gives it one, and retries it once that
    is stale, instead of waiting for it forever."""
    path = sweep_file(tmp_path, "silent", 2, {"optimizer.lr": {"uniform": [0.01, 0.05]}}, pruner="none", heartbeat=1)
    args = ["sweep", path, "--data-dir", tiny_mnist, *TINY, "--set", "training.epochs=1"]
    assert nnx(*args, "--trials", 1, cwd=tmp_path).returncode == 0
    silent = load(tmp_path, "silent").ask()  # taken without a heartbeat, as by a worker killed at once
    result = nnx(*args, "--trials", 2, cwd=tmp_path, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    study = load(tmp_path, "silent")
    assert study.get_trials()[silent.number].state.name == "FAIL"
    assert states(study) == {"FAIL": 1, "COMPLETE": 2}


def test_a_continued_sweep_proposes_new_configurations(tiny_mnist: Path, tmp_path: Path) -> None:
    """Continuing a random sweep with more trials draws new values: the sampler's stream does
    not start again from the sweep's seed (which proposed the first trials' values again)."""
    path = sweep_file(tmp_path, "more", 2, {"optimizer.lr": {"uniform": [0.01, 0.05]}}, pruner="none")
    args = ["sweep", path, "--data-dir", tiny_mnist, *TINY, "--set", "training.epochs=1"]
    for trials in (2, 4):
        result = nnx(*args, "--trials", trials, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
    lrs = [t.params["optimizer.lr"] for t in load(tmp_path, "more").get_trials()]
    assert len(lrs) == 4 and len(set(lrs)) == 4, lrs


def test_each_worker_continuation_and_machine_has_its_own_proposals() -> None:
    from nnx.sweep.spec import SweepSpec
    from nnx.sweep.study import sampler_seed

    spec = SweepSpec.model_validate({"name": "s", "seed": 7, "search": {"optimizer.lr": {"uniform": [0.1, 0.2]}}})
    assert sampler_seed(spec, 0, 0) == 7 and sampler_seed(spec, 1, 0) == 8  # a new sweep: as it always was
    seeds = {sampler_seed(spec, w, n, m) for w in range(4) for n in (0, 5, 40) for m in ("", "a", "b")}
    assert len(seeds) == 4 * 3 * 3


def test_a_stopped_trial_is_no_failure() -> None:
    """Only a trial that failed with an error of its own counts: not one stopped (queued again),
    a surplus record, or one whose worker died (no error recorded; failed when stale, retried)."""
    from nnx.sweep.study import count

    study = optuna.create_study()
    for attrs in ({"interrupted": True}, {"surplus": True}, {}, {"error": "lr 5.0: diverged"}):
        trial = study.ask()
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert count(study).failed == 1


@contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of `size` at `folder` (CI runs as root; elsewhere the test skips with the reason)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        message = f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()}): needs root"
        if os.environ.get("CI"):
            raise AssertionError(message)
        pytest.skip(message)
    try:
        yield folder
    finally:  # lazily: the test's own connection to a study on it may still be open
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


@pytest.mark.heavy(12)
def test_a_full_disk_under_the_study_is_one_line_and_the_sweep_continues_once_there_is_room(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    search = {"optimizer.lr": {"uniform": [0.01, 0.05]}}
    path = sweep_file(tmp_path, "full", 3, search, pruner="none", storage_patience=2)
    with small_disk(tmp_path / "db", "300k") as db:
        args = ["sweep", path, "--storage", f"sqlite:///{db / 'study.db'}", "--data-dir", tiny_mnist, *TINY,
                "--set", "training.epochs=1"]  # fmt: skip
        assert nnx(*args, "--trials", 1, cwd=tmp_path).returncode == 0
        fill(db)
        result = nnx(*args, cwd=tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
        retried, line = result.stderr.strip().splitlines()  # retried for storage_patience, then one line
        assert retried == "sweep full: the storage failed (database or disk is full); retrying for up to 2 s"
        assert line.startswith("error: sweep full: its storage sqlite:///") and "database or disk is full" in line
        (db / "filler").unlink()
        again = nnx(*args, cwd=tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
        assert states(optuna.load_study(study_name="full", storage=f"sqlite:///{db / 'study.db'}")) == {"COMPLETE": 3}


def fill(folder: Path) -> None:
    """Fill a small file system to the last byte."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # no space left: full
        pass
    finally:
        os.close(fd)


def test_a_full_disk_under_the_trials_stops_the_sweep_in_one_line_and_counts_no_failure(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    path = sweep_file(tmp_path, "room", 3, {"optimizer.lr": {"uniform": [0.01, 0.05]}}, pruner="none")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["sweep", path, "--storage", storage, "--data-dir", tiny_mnist, *TINY, "--set", "training.epochs=1"]
    with small_disk(tmp_path / "runs", "150k") as runs:
        result = nnx(*args, cwd=tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: sweep room: stopped, no space left on device writing runs/room/trial-0000/")
        subprocess.run(["mount", "-o", "remount,size=8m", str(runs)], check=True)
        again = nnx(*args, cwd=tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
    study = optuna.load_study(study_name="room", storage=storage)
    assert states(study) == {"FAIL": 1, "COMPLETE": 3}
    from nnx.sweep.study import count

    assert count(study).failed == 0  # the disk's fault, not the trial's: no failure budget spent


class PrivateServer:
    """A PostgreSQL server of this test's own (Debian's binaries, as .ci/run uses), which the test
    may stop and start again without disturbing the shared one."""

    def __init__(self, folder: Path) -> None:
        import glob
        import socket

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found or shutil.which("runuser") is None or os.geteuid() != 0:
            message = "needs Debian's PostgreSQL server binaries and root (.ci/run has both)"
            if os.environ.get("CI"):
                raise AssertionError(message)
            pytest.skip(message)
        self.bin = Path(found[-1]).parent
        self.folder = folder
        folder.mkdir()
        shutil.chown(folder, "postgres")
        folder.parent.chmod(0o755)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.postgres("initdb", "-D", folder / "data", "-A", "trust", "-U", "postgres")
        self.start()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def postgres(self, program: str, *args) -> None:
        command = ["runuser", "-u", "postgres", "--", str(self.bin / program), *map(str, args)]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.folder}"
        self.postgres("pg_ctl", "-D", self.folder / "data", "-l", self.folder / "log", "-w", "-o", options, "start")

    def stop(self) -> None:
        self.postgres("pg_ctl", "-D", self.folder / "data", "-m", "fast", "-w", "stop")


@pytest.fixture
def private_server():
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="nnx-pg-"))  # in /tmp: the pytest folders are root's alone
    try:
        server = PrivateServer(folder / "pg")
        yield server
        subprocess.run(["runuser", "-u", "postgres", "--", str(server.bin / "pg_ctl"), "-D",
                        str(server.folder / "data"), "-m", "immediate", "stop"], capture_output=True)  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.heavy(40)
def test_postgresql_stopped_mid_sweep_is_one_line_and_the_sweep_continues_once_it_is_back(
    tiny_mnist: Path, tmp_path: Path, private_server: PrivateServer
) -> None:
    """A restart within the sweep's storage_patience is ridden out (one line says so); an outage
    that outlasts it stops the sweep with one line, and the same command continues it."""
    pytest.importorskip("psycopg")
    search = {"optimizer.lr": {"uniform": [0.01, 0.05]}}
    path = sweep_file(tmp_path, "outage", 2, search, pruner="none", heartbeat=1, storage_patience=6)
    args = ["sweep", path, "--storage", private_server.url, "--data-dir", tiny_mnist, *TINY]
    proc = start(*args, "--set", "training.epochs=400", cwd=tmp_path)
    metrics = tmp_path / "runs" / "outage" / "trial-0000" / "metrics.jsonl"
    wait_for(metrics.is_file)
    private_server.stop()  # a restart: back within the patience
    time.sleep(2)
    private_server.start()
    epochs = len(metrics.read_text().splitlines())
    wait_for(lambda: len(metrics.read_text().splitlines()) > epochs + 2)  # training on, reporting again
    assert proc.poll() is None
    private_server.stop()  # gone for longer than the patience
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1 and "Traceback" not in output, output
    assert "sweep outage: the storage failed (" in output and "retrying for up to 6 s" in output
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"error: sweep outage: its storage postgresql://postgres@127.0.0.1:{private_server.port}")
    assert "finished trials are kept" in last
    private_server.start()
    again = nnx(*args, "--set", "training.epochs=400", cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    shown = nnx("sweep", "show", "outage", "--storage", private_server.url, cwd=tmp_path)
    assert shown.returncode == 0 and "best config:" in shown.stdout, shown.stdout + shown.stderr
    private_server.stop()
    gone = nnx("sweep", "show", "outage", "--storage", private_server.url, cwd=tmp_path)
    assert gone.returncode == 2 and "Traceback" not in gone.stderr, gone.stderr
    (line,) = gone.stderr.strip().splitlines()
    assert line.startswith("error: --storage postgresql://postgres@127.0.0.1") and "cannot open" in line


def postgres_url() -> str:
    url = os.environ.get("NNX_TEST_POSTGRES")
    if not url:
        pytest.skip("no PostgreSQL to test against: .ci/run starts one and sets NNX_TEST_POSTGRES")
    return url


@pytest.fixture
def fresh_database() -> str:
    """A new, empty database on the test server (so the workers race to create its tables)."""
    import psycopg

    server = postgres_url()
    name = f"nnx_sweep_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield server.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_two_workers_join_one_study_on_postgresql(tiny_mnist: Path, tmp_path: Path, fresh_database: str) -> None:
    """As on two machines: each started with the same command and --storage; one study."""
    url = fresh_database
    name = "pg"
    path = sweep_file(tmp_path, name, 6, {"optimizer.lr": {"log_uniform": [0.005, 0.2]}}, pruner="none")
    machines = [tmp_path / "a", tmp_path / "b"]
    procs = []
    for folder in machines:
        folder.mkdir()
        procs.append(
            start(
                "sweep",
                path,
                "--storage",
                url,
                "--data-dir",
                tiny_mnist,
                *TINY,
                "--set",
                "training.epochs=3",
                cwd=folder,
                env={"OPENBLAS_NUM_THREADS": "1"},
            )  # fmt: skip
        )
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    study = optuna.load_study(study_name=name, storage=url.replace("postgresql://", "postgresql+psycopg://", 1))
    assert states(study) == {"COMPLETE": 6}
    numbers = [t.number for t in study.get_trials() if not t.user_attrs.get("surplus")]
    assert sorted(numbers) == sorted(set(numbers))
    dirs = [p.name for folder in machines for p in (folder / "runs" / name).glob("trial-*")]
    assert sorted(dirs) == sorted(f"trial-{n:04d}" for n in numbers)  # each trial ran on one machine only
    shown = nnx("sweep", "show", name, "--storage", url, cwd=machines[0])
    assert shown.returncode == 0 and "best config:" in shown.stdout, shown.stderr


def _claim_queued(url: str, start: float, asks: int, claimed) -> None:
    """One worker process: its own connection to the storage, then `asks` trials asked for as
    fast as it can, starting with the others at `start`."""
    from nnx.sweep.study import open_storage

    study = optuna.load_study(study_name="claims", storage=open_storage(url))
    while time.time() < start:
        pass
    claimed.put([study.ask().number for _ in range(asks)])


@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_a_queued_trial_is_claimed_by_one_worker_only(storage: str, tmp_path: Path, request) -> None:
    """Four processes take 100 queued trials at once: each is taken exactly once (SQLite has no
    row locks; without serialized transactions about one claim in ten was a double)."""
    import multiprocessing

    from nnx.sweep.study import open_storage

    if storage == "sqlite":
        url = f"sqlite:///{tmp_path / 'study.db'}"
    else:
        url = request.getfixturevalue("fresh_database")
    study = optuna.create_study(study_name="claims", storage=open_storage(url))
    for k in range(100):
        study.enqueue_trial({"x": k}, skip_if_exists=False)
    context = multiprocessing.get_context("spawn")  # (each process opens its own connections)
    claimed = context.Queue()
    start = time.time() + 3  # every process connected and waiting by then
    workers = [context.Process(target=_claim_queued, args=(url, start, 25, claimed)) for _ in range(4)]
    for worker in workers:
        worker.start()
    numbers = [n for _ in workers for n in claimed.get(timeout=120)]
    for worker in workers:
        worker.join(timeout=30)
    assert sorted(numbers) == list(range(100)), f"claimed twice: {sorted({n for n in numbers if numbers.count(n) > 1})}"


@pytest.mark.parametrize(
    ("sampler", "storage"),
    [
        pytest.param("grid", "sqlite", marks=pytest.mark.heavy(25)),
        pytest.param("random", "postgresql", marks=pytest.mark.heavy(25)),
    ],
)
def test_a_sweep_soaked_in_kills_runs_every_trial_exactly_once(
    sampler: str, storage: str, tiny_mnist: Path, tmp_path: Path, request
) -> None:
    """benchmarks/sweep_soak.py, small: three workers of short trials SIGKILLed at random moments
    (one worker, or the whole sweep), each time continued with the same command. The study then
    holds exactly its budget of finished trials, no configuration twice (on a grid, no point
    twice), no trial retried twice, and every finished trial's folder holds a finished run."""
    url = request.getfixturevalue("fresh_database") if storage == "postgresql" else None
    command = [sys.executable, str(ROOT / "benchmarks" / "sweep_soak.py"), "--json", "--sampler", sampler,
               "--trials", "15", "--workers", "3", "--kills", "6", "--seed", "1", "--data-dir", str(tiny_mnist),
               "--set", "training.validation=100", "--set", "data.limit=600"]  # fmt: skip
    command += ["--storage", url] if url else []
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert done.stdout.strip(), done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["missed"] == [] and done.returncode == 0, result
    assert result["kills"] == 6 and result["finished"] == 15


def test_a_same_named_sweep_in_another_storage_is_refused_its_folder(
    tiny_mnist: Path, tmp_path: Path, fresh_database: str
) -> None:
    """runs/<name>/ holds one study's trials: the same sweep run against another storage from the
    same folder would number its trials from 0 again, into the first study's trial folders."""
    path = sweep_file(tmp_path, "twice", 1, {"optimizer.lr": {"uniform": [0.01, 0.05]}}, pruner="none")
    args = ["sweep", path, "--data-dir", tiny_mnist, *TINY, "--set", "training.epochs=1"]
    assert nnx(*args, cwd=tmp_path).returncode == 0
    other = nnx(*args, "--storage", fresh_database, cwd=tmp_path)
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stdout + other.stderr
    (line,) = other.stderr.strip().splitlines()
    assert line.startswith(
        "error: runs/twice/: holds the trials of sweep twice in its own study.db, not in postgresql://"
    )
    assert sorted(p.name for p in (tmp_path / "runs" / "twice").glob("trial-*")) == ["trial-0000"]
    again = nnx(*args, "--trials", 2, cwd=tmp_path)  # its own storage continues as before
    assert again.returncode == 0, again.stdout + again.stderr
    assert (tmp_path / "runs" / "twice" / "storage.txt").read_text() == "default\n"
