"""Optuna glue: storage, sampler and pruner from the sweep file; one nnx run per trial.

Each trial is an ordinary run directory (runs/<sweep>/trial-NNNN) made by nnx.api.train, the
same function `nnx train` calls. Every epoch reports the validation metric to the trial, and the
pruner may stop the run there (it keeps its partial run directory). Workers never coordinate
directly: they share the study's storage, an embedded SQLite file in the sweep's folder by
default, or a PostgreSQL database that workers on several machines join. Trial numbers come from
the storage, so no two workers run the same trial.
"""

from __future__ import annotations

import itertools
import math
import random
import socket
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnx.atomic import WriteError, write_atomic
from nnx.errors import ConfigError, NnxError
from nnx.runs import config_differences, flatten
from nnx.sweep.spec import SweepSpec
from nnx.trainer import Callback, EpochMetrics, TrainingDivergedError

SWEEPS = Path("runs")
# A worker waiting for others' trials looks at the study this often: it goes on (or is done) within
# a second of their end, while a dead worker's trial is found by its heartbeat (every few seconds).
WAIT_POLL_SECONDS = 1.0
FINISHED = ("COMPLETE", "PRUNED")


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise NnxError("nnx sweep needs Optuna: pip install 'nnx[sweep]'") from None
    # Optuna logs a failed trial with its traceback at WARNING; nnx reports trials itself.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


class SweepFaultError(NnxError):
    """The sweep's storage or disk failed, not its trials: finished trials are kept, and the same
    command continues once the cause is fixed."""

    exit_code = 1


def exception_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the errors behind it (each one's cause, else its context), outermost first."""
    chain: list[BaseException] = []
    inner: BaseException | None = exc
    while inner is not None and len(chain) < 20:  # (a chain is short; 20 bounds a cycle)
        chain.append(inner)
        inner = inner.__cause__ or inner.__context__
    return chain


def root_cause(exc: BaseException) -> str:
    """The first line of the innermost error behind `exc` (sqlite3's "database or disk is full",
    psycopg's "connection refused"), not the wrappers' boilerplate around it."""
    inner = exception_chain(exc)[-1]
    text = str(getattr(inner, "orig", None) or inner).strip()
    return text.splitlines()[0] if text else type(inner).__name__


@contextmanager
def storage_faults(name: str, url: str) -> Iterator[None]:
    """Optuna's storage failing (a full or read-only disk under an SQLite file, a PostgreSQL server
    stopped, restarted or unreachable) becomes one line naming the storage and the cause."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    storage_errors = (optuna.exceptions.StorageInternalError, SQLAlchemyError)
    try:
        yield
    except NnxError:
        raise
    except Exception as exc:
        # Also what a storage error leads to: Optuna, failing to record a trial's end, can raise
        # an UnboundLocalError of its own while handling it (the storage's error in its context).
        if not any(isinstance(e, storage_errors) for e in exception_chain(exc)):
            raise
        raise SweepFaultError(
            f"sweep {name}: its storage {shown_url(url)} failed ({root_cause(exc)}); finished trials are kept: "
            "run the same command again once it is back"
        ) from None


def sweep_dir(name: str) -> Path:
    return SWEEPS / name


def claim_folder(name: str, url: str) -> None:
    """The sweep's folder (runs/<name>/) holds the trials of one study: the first run records its
    storage there (storage.txt), and a run of a same-named sweep in another storage is refused,
    since its trial numbers start again at 0 and its trials' folders would collide."""
    folder = sweep_dir(name)
    marker = folder / "storage.txt"
    ours = "default" if url == default_storage(name) else shown_url(url)
    if marker.is_file():
        recorded = marker.read_text(errors="replace").strip()
    elif any(folder.glob("trial-*")):  # (a folder from before nnx recorded it: the default storage's)
        recorded = "default"
    else:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(marker, f"{ours}\n".encode())
        return
    if recorded != ours:
        where = "its own study.db" if recorded == "default" else recorded
        raise ConfigError(
            f"{folder}/: holds the trials of sweep {name} in {where}, not in {shown_url(url)}; give this sweep "
            f"another name, or run it from another folder (or, if both are one database, correct {marker})"
        )


def default_storage(name: str) -> str:
    return f"sqlite:///{(sweep_dir(name) / 'study.db').resolve()}"


def shown_url(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        rest = f"{user}:***@{rest.split('@', 1)[1]}"
    return f"{scheme}{sep}{rest}"


def open_storage(
    url: str,
    heartbeat: int | None = None,
    create: bool = True,
    claims: bool = True,
    patience: float = 0,
    on_retry: Callable[[str], None] | None = None,
) -> Any:
    """An Optuna RDB storage for sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB,
    checked by connecting; heartbeats (seconds) let a killed worker's trial be found and retried.
    `claims`: this process takes trials (a worker), so an SQLite file's transactions are serialized;
    a reader (`nnx sweep show`) leaves them as they are and can read a file on a read-only disk.
    `patience`: seconds each storage call is retried for when the storage fails (see `retrying`),
    with `on_retry` told once per outage."""
    optuna = import_optuna()
    given = url
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("sqlite", "postgresql", "postgres", "postgresql+psycopg"):
        raise ConfigError(f"--storage {shown_url(url)}: unsupported (use sqlite:///PATH or postgresql://USER@HOST/DB)")
    if scheme == "sqlite":
        path = Path(rest[1:]) if rest.startswith("/") else Path(rest)
        if not create and not path.is_file():
            raise ConfigError(f"{path}: no such sweep database")
        engine = {"connect_args": {"timeout": 60}}  # workers wait for each other's writes
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise NnxError("a PostgreSQL storage needs its driver: pip install 'nnx[sweep]'") from None
        url = f"postgresql+psycopg://{rest}"
        engine = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    kwargs: dict[str, Any] = {"engine_kwargs": engine}
    if heartbeat:
        kwargs.update(
            heartbeat_interval=heartbeat,
            grace_period=3 * heartbeat,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
    for attempt in range(5):
        try:
            storage = optuna.storages.RDBStorage(url, **kwargs)
        except Exception as exc:  # SQLAlchemy's OperationalError and friends: unreachable, refused, bad name
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            # Workers started together on a new database race to create its tables: the loser
            # sees a duplicate key and finds the tables there when it tries again.
            if "duplicate key" in reason or "already exists" in reason:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise ConfigError(f"--storage {shown_url(given)}: cannot open ({reason})") from None
        if scheme == "sqlite" and claims:
            serialize_transactions(storage.engine)
        if patience > 0:
            retrying(storage, patience, on_retry or (lambda message: None))
        return storage
    raise ConfigError(f"--storage {shown_url(given)}: cannot open (its tables could not be created)")


# What Optuna's cached storage and its heartbeat thread call on the RDB storage: the database calls.
STORAGE_CALLS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_all_studies", "create_new_trial", "set_trial_param", "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id", "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials", "get_n_trials",
    "get_best_trial", "get_trial_params", "get_trial_user_attrs", "get_trial_system_attrs", "_get_trials",
    "_get_stale_trial_ids", "record_heartbeat", "_create_new_trial", "_set_trial_param", "_get_best_trial_id",
)  # fmt: skip


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` is the storage being unreachable or unwritable (a connection refused or cut, a
    database or disk full, a database locked past its timeout), which may pass, rather than a
    refusal of the call itself (a constraint, a finished trial)."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    return any(isinstance(e, (OperationalError, InterfaceError)) for e in exception_chain(exc))


def retrying(storage: Any, patience: float, on_retry: Callable[[str], None]) -> None:
    """Makes each database call of `storage` retry an outage for up to `patience` seconds, waiting
    0.5 s, then twice as long each time (at most 10 s), before it raises the outage's error.

    A call may fail after the database did what it asked (the connection cut before the answer
    came): a trial's state set again then finds it already set, and that is its success. A
    heartbeat that cannot be recorded is given up silently (the worker's own next call meets the
    outage and says so)."""
    import optuna

    outage = {"told": False}  # on_retry is told once per outage: until a call succeeds again

    def patient(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def attempt(*args: Any, **kwargs: Any) -> Any:
            deadline, wait, retried = math.inf, 0.5, False
            while True:
                try:
                    result = call(*args, **kwargs)
                    outage["told"] = False
                    return result
                except optuna.exceptions.UpdateFinishedTrialError:
                    if retried and name == "set_trial_state_values":
                        return True
                    raise
                except Exception as exc:
                    if not is_outage(exc):
                        raise
                    if not retried:  # (patience counts from the first failure: a call may hang a while first)
                        deadline = time.monotonic() + patience
                    if time.monotonic() + wait > deadline:
                        if name == "record_heartbeat":
                            return None
                        raise
                    if not outage["told"]:
                        outage["told"] = True
                        on_retry(f"the storage failed ({root_cause(exc)}); retrying for up to {patience:g} s")
                    retried = True
                    time.sleep(wait)
                    wait = min(2 * wait, 10.0)

        return attempt

    for name in STORAGE_CALLS:
        setattr(storage, name, patient(name, getattr(storage, name)))


def serialize_transactions(engine: Any) -> None:
    """Every transaction on this SQLite engine takes the database's write lock when it begins
    (BEGIN IMMEDIATE), so that a read and the write that depends on it are one atomic step.

    Optuna claims a queued trial by reading its state and setting RUNNING only if it was WAITING,
    and fails a stale trial only if it is still RUNNING. PostgreSQL locks the row it read (SELECT
    ... FOR UPDATE); SQLite has no row locks, and Python's sqlite3 begins a transaction only at the
    first write, so two workers could both read WAITING and both claim the trial. Serialized, the
    second reads RUNNING and takes the next one. Transactions here are a few milliseconds; a
    worker waits for the lock up to the connection's timeout.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # sqlite3 leaves BEGIN to SQLAlchemy's event below

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners (creating the tables) are closed


def sampler_seed(spec: SweepSpec, worker: int, trials_before: int, machine: str = "") -> int:
    """The seed of one worker's proposals: its own stream for each worker, for each continuation
    (`trials_before`: the trials the study already holds, so a continued sweep does not propose
    its first configurations again) and for each machine sharing a study (`machine`: a name; ""
    for a study only this machine uses). A new sweep on one machine: spec.seed + worker, as before,
    so that it proposes the same configurations every time it starts afresh."""
    seed = spec.seed + worker + 1_000_003 * trials_before
    if machine:
        seed += zlib.crc32(machine.encode()) << 20
    return seed % (1 << 32)


def make_sampler(spec: SweepSpec, worker: int, trials_before: int = 0, machine: str = "") -> Any:
    optuna = import_optuna()
    seed = sampler_seed(spec, worker, trials_before, machine)
    if spec.sampler in ("random", "grid"):  # (a grid's trials all come from its queue: never sampled)
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(spec: SweepSpec) -> Any:
    optuna = import_optuna()
    if spec.pruner == "median":
        # Prune a trial whose epoch value is worse than the median of earlier trials at the same
        # epoch, from the first epoch on, once 4 trials have finished.
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    if spec.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def budget(spec: SweepSpec) -> int:
    """Trials to finish: `trials`, or fewer when a grid has fewer points."""
    if spec.sampler == "grid":
        return min(spec.trials, math.prod(len(s.choice) for s in spec.search.values()))
    return spec.trials


def open_study(
    spec: SweepSpec, storage: Any, worker: int = 0, create: bool = True, base: dict[str, Any] | None = None
) -> Any:
    """The sweep's study: created with the sweep file and the base config its trials share (`base`:
    the resolved config with --set applied), or continued when both are the ones it began with."""
    optuna = import_optuna()
    summaries = optuna.study.get_all_study_summaries(storage, include_best_trial=False)
    # Machines sharing a study through a server each get their own proposals; an embedded SQLite
    # file is one machine's.
    machine = "" if storage.url.startswith("sqlite") else socket.gethostname()
    if spec.name in [s.study_name for s in summaries]:
        (summary,) = [s for s in summaries if s.study_name == spec.name]
        sampler = make_sampler(spec, worker, summary.n_trials, machine)
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=make_pruner(spec))
        recorded = study.user_attrs.get("sweep")
        if recorded is not None and _comparable(recorded) != _comparable(spec.model_dump(mode="json", by_alias=True)):
            raise ConfigError(
                f"sweep {spec.name}: the study in this storage was started from a different sweep file; "
                "give the new one another name"
            )
        _check_same_base(spec, study.user_attrs.get("base"), base)
        queue_grid(spec, study, storage)
        return study
    if not create:
        names = ", ".join(s.study_name for s in summaries)
        raise ConfigError(f"no sweep named {spec.name} in this storage (it has: {names or 'none'})")
    sampler, pruner = make_sampler(spec, worker, 0, machine), make_pruner(spec)
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction=spec.direction,
        load_if_exists=True,  # another worker may create it at the same moment
    )
    study.set_user_attr("sweep", spec.model_dump(mode="json", by_alias=True))
    if base is not None and "base" not in study.user_attrs:  # (another worker may have set it first)
        study.set_user_attr("base", _shared_settings(spec, base))
    _check_same_base(spec, study.user_attrs.get("base"), base)
    queue_grid(spec, study, storage)
    return study


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every point of a grid sweep (Optuna's values: a list choice as its JSON text), shuffled by
    the sweep's seed so that a budget smaller than the grid spreads over it."""
    keys = list(spec.search)
    grid = itertools.product(*(spec.search[key].grid_values() for key in keys))
    points = [dict(zip(keys, values, strict=True)) for values in grid]
    random.Random(spec.seed).shuffle(points)
    return points


def queue_grid(spec: SweepSpec, study: Any, storage: Any) -> None:
    """Puts each point of a grid sweep in the study's queue, once.

    Workers take queued trials one at a time and atomically (a WAITING trial is claimed by one
    worker: serialize_transactions on SQLite, a row lock on PostgreSQL), and a grid worker never
    asks the sampler for a point, so no point runs twice, whatever the number of workers and
    machines. (Optuna's GridSampler picks an unvisited point in each worker, and two workers asking
    at once could pick the same one.) The first process to start the sweep queues the points under
    the study's lock; one that dies while queueing leaves the rest to the next start.
    """
    if spec.sampler != "grid" or study.user_attrs.get("grid_queued"):
        return
    with study_lock(storage, spec.name):
        if study.user_attrs.get("grid_queued"):  # (another process queued them while this one waited)
            return
        present = [t.params or t.system_attrs.get("fixed_params") for t in study.get_trials(deepcopy=False)]
        for point in grid_points(spec):
            if point not in present:
                study.enqueue_trial(point, skip_if_exists=False)
        study.set_user_attr("grid_queued", True)


@contextmanager
def study_lock(storage: Any, name: str) -> Iterator[None]:
    """Holds a lock that one process at a time holds for sweep `name`, across every process and
    machine that opens its storage, and that its holder's death releases: a file lock beside an
    SQLite study (one machine's), or a PostgreSQL advisory lock of the holder's session."""
    if storage.engine.name == "sqlite":
        import fcntl

        with open(f"{storage.engine.url.database}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        return
    from sqlalchemy import text

    key = zlib.crc32(f"nnx sweep {name}".encode())
    with storage.engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            connection.commit()


# Where a worker runs and reads its data may differ between machines; the results do not.
_PER_MACHINE = ("device", "data.dir", "data.mirrors")


def _shared_settings(spec: SweepSpec, base: dict[str, Any]) -> dict[str, Any]:
    """The base config's settings that every trial must share: all but the searched keys and where
    each machine runs and finds its data, flattened to dotted keys."""
    searched = tuple(spec.search) + tuple(f"{key}." for key in spec.search)
    return {k: v for k, v in flatten(base).items() if not k.startswith(searched + _PER_MACHINE)}


def _check_same_base(spec: SweepSpec, recorded: dict[str, Any] | None, base: dict[str, Any] | None) -> None:
    """Trials run under other fixed settings (another --set training.epochs, data.limit, batch
    size) are not comparable with the study's: refused, naming what differs."""
    if recorded is None or base is None:  # a study from before nnx recorded it; or `show`
        return
    differences = config_differences([recorded, _shared_settings(spec, base)])
    if differences:
        changed = ", ".join(f"{key} {was} -> {now}" for key, (was, now) in differences.items())
        raise ConfigError(
            f"sweep {spec.name}: its trials ran with other settings than these ({changed}); continue it with "
            "the --set values it began with, or give the sweep another name"
        )


def _comparable(recorded: dict[str, Any]) -> dict[str, Any]:
    # More trials, or another patience with the storage, on a later run continues the same study;
    # anything else makes it another sweep.
    return {k: v for k, v in recorded.items() if k not in ("trials", "storage_patience")}


def start_silent_heartbeats(study: Any) -> None:
    """Gives a first heartbeat to each RUNNING trial of `study` that has none.

    A worker killed after taking a trial but before its first heartbeat leaves a RUNNING trial
    that Optuna never finds stale (it compares heartbeats, and there is none), so the sweep would
    wait for it forever. Started here, the heartbeat goes stale after the grace period unless the
    trial's own worker is alive and beating, and the trial is then failed and retried like any
    other dead one. A trial that has heartbeats is left alone (refreshing it would hide its death).
    """
    from sqlalchemy import text

    storage = getattr(study._storage, "_backend", study._storage)  # the RDB storage under Optuna's cache
    silent = text(
        "SELECT trials.trial_id FROM trials LEFT OUTER JOIN trial_heartbeats "
        "ON trial_heartbeats.trial_id = trials.trial_id "
        "WHERE trials.study_id = :study AND trials.state = 'RUNNING' AND trial_heartbeats.trial_id IS NULL"
    )
    with storage.engine.connect() as connection:
        trial_ids = connection.execute(silent, {"study": study._study_id}).scalars().all()
    for trial_id in trial_ids:
        storage.record_heartbeat(trial_id)  # (a race with the trial's own first beat is harmless)


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0
    best_value: float | None = None
    best_number: int | None = None

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def count(study: Any) -> Counts:
    c = Counts()
    for t in study.get_trials(deepcopy=False):
        state = t.state.name
        if state == "COMPLETE":
            c.complete += 1
        elif state == "PRUNED":
            c.pruned += 1
        elif state == "FAIL" and "error" in t.user_attrs and not t.user_attrs.get("interrupted"):
            # A failure of the trial's own (its error recorded). A stopped trial (queued again), a
            # surplus record, or a trial whose worker died (failed when its heartbeat went stale,
            # and retried) is the environment's, not a failure of the sweep's.
            c.failed += 1
        elif state == "RUNNING":
            c.running += 1
        elif state == "WAITING":
            c.waiting += 1
    if c.complete:
        best = study.best_trial
        c.best_value, c.best_number = best.value, best.number
    return c


class PruneOnEpoch(Callback):
    """Reports each epoch's validation metric to the trial, then asks the pruner."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.trainer = None
        self.pruned_at: int | None = None

    def bind(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        value = getattr(metrics, self.metric)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, metrics.epoch)
        if self.trial.should_prune():
            self.pruned_at = metrics.epoch
            self.trainer.request_stop()


class SurplusTrialError(Exception):
    """This trial would go past the budget (two workers asked at once): it is recorded and skipped."""


class TrialInterruptedError(Exception):
    """Ctrl-C stopped the trial's run."""


class TrialDiskError(Exception):
    """The trial's run could not be written (a full or read-only disk)."""


def metric_value(run: Any, metric: str) -> float:
    """The trial's value: the test accuracy, or the validation metric of the epoch whose weights
    the run kept (the best one under early stopping, else the last)."""
    if metric == "test_accuracy":
        return float(run.summary["test_accuracy"])
    epoch = run.result.best_epoch or len(run.history)
    return float(getattr(run.history[epoch - 1], metric))


class Worker:
    """Runs trials until the study has `budget` finished ones (complete or pruned)."""

    def __init__(
        self,
        spec: SweepSpec,
        study: Any,
        overrides: dict[str, Any],
        assignments: list[str],
        on_trial_end: Callable[[Any, Counts], None] | None = None,
        base: str | None = None,
        on_wait: Callable[[Counts], None] | None = None,
    ) -> None:
        self.spec, self.study = spec, study
        self.base = base or spec.base  # the base config's name or path, as spec.base_config finds it
        self.overrides, self.assignments = overrides, assignments
        self.on_trial_end = on_trial_end or (lambda trial, counts: None)
        self.on_wait = on_wait or (lambda counts: None)
        self.budget = budget(spec)
        self.current: Any = None

    def run(self) -> Counts:
        optuna = import_optuna()
        while True:
            # A trial whose worker died (no heartbeat for 3 intervals) is failed and queued again
            # before counting, so that it is not mistaken for one still running.
            start_silent_heartbeats(self.study)
            optuna.storages.fail_stale_trials(self.study)
            counts = count(self.study)
            if counts.finished >= self.budget:
                return counts
            grid_emptied = self.spec.sampler == "grid" and not counts.waiting  # (its queue taken)
            if counts.finished + counts.running >= self.budget or (grid_emptied and counts.running):
                # The rest of the budget (or of the grid) is running: in other workers, or in one
                # that died and whose heartbeat has not yet gone stale. Wait for them to end, or to
                # be failed and queued again, which this worker then runs: never "done" while one runs.
                self.on_wait(counts)
                time.sleep(WAIT_POLL_SECONDS)
                continue
            if grid_emptied:
                return counts  # every point of the grid has run
            if counts.failed >= max(3, self.budget):
                raise NnxError(
                    f"sweep {self.spec.name}: {counts.failed} trials failed; see the 'error' of each in "
                    f"`nnx sweep show {self.spec.name}`"
                )
            self.current = None
            try:
                self.study.optimize(
                    self.objective, n_trials=1, catch=(NnxError, SurplusTrialError), gc_after_trial=False
                )
            except TrialInterruptedError:
                self._retry_interrupted()
                raise KeyboardInterrupt from None
            except TrialDiskError as exc:  # every next trial would fail alike: stop, naming the disk
                self._retry_interrupted()
                raise SweepFaultError(
                    f"sweep {self.spec.name}: stopped, {exc}; finished trials are kept and this one is queued "
                    "again: run the same command once there is room"
                ) from None
            except KeyboardInterrupt:
                self._retry_interrupted()
                raise
            trial = next(t for t in self.study.get_trials(deepcopy=False) if t.number == self.current.number)
            if trial.user_attrs.get("surplus"):  # (another worker took the last of the budget:
                continue  # wait for it, and retry it if its worker dies, or be done)
            self.on_trial_end(trial, count(self.study))

    def _retry_interrupted(self) -> None:
        """The trial Ctrl-C stopped is failed; its parameters go back in the queue so that running
        the same command again runs it first."""
        trial = self.current
        if trial is None or not trial.params:
            return
        self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)

    def objective(self, trial: Any) -> float:
        optuna = import_optuna()
        self.current = trial
        try:
            return self._objective(trial)
        except KeyboardInterrupt:  # Ctrl-C before or after the run itself: a stop, as within it
            trial.set_user_attr("interrupted", True)
            raise
        except (optuna.TrialPruned, SurplusTrialError, TrialInterruptedError, TrialDiskError, NnxError):
            raise
        except Exception as exc:  # a fault of nnx's: the worker stops with it; the trial says what it was
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise

    def _objective(self, trial: Any) -> float:
        optuna = import_optuna()
        from nnx import api

        self._check_budget(trial)
        params = {key: space.suggest(trial, key) for key, space in self.spec.search.items()}
        run_dir = sweep_dir(self.spec.name) / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("host", socket.gethostname())
        pruner = PruneOnEpoch(trial, self.spec.pruning_metric)
        try:
            run = api.train(
                self.base,
                {**self.overrides, **params},
                assignments=self.assignments,
                out=run_dir,
                callbacks=[pruner],
                download=False,
            )
        except TrainingDivergedError as exc:  # a bad corner of the space: pruned, not broken
            trial.set_user_attr("diverged", str(exc))
            raise optuna.TrialPruned() from None
        except api.InterruptedRunError:  # stopped while it was being finished: a stop all the same
            trial.set_user_attr("interrupted", True)
            raise TrialInterruptedError() from None
        except WriteError as exc:  # the disk's fault, not the trial's
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("error", str(exc))
            raise TrialDiskError(str(exc).split("; ")[0]) from None  # (its resume hint is for nnx train)
        except NnxError as exc:
            trial.set_user_attr("error", str(exc))
            raise
        trial.set_user_attr("config", run.config.model_dump(mode="json"))
        trial.set_user_attr("epochs", len(run.history))
        if run.interrupted:
            if pruner.pruned_at is not None:
                raise optuna.TrialPruned()
            trial.set_user_attr("interrupted", True)
            raise TrialInterruptedError()
        return metric_value(run, self.spec.metric)

    def _check_budget(self, trial: Any) -> None:
        """Two workers may ask for a trial at the same moment with one left in the budget: the
        lower trial number runs, the other is recorded as a surplus failure and skipped. So is a
        grid trial that did not come from the grid's queue (another worker took the last queued
        point between this one's look at the queue and its asking)."""
        trials = self.study.get_trials(deepcopy=False)
        if self.spec.sampler == "grid":
            (this,) = [t for t in trials if t.number == trial.number]
            if not (this.params or "fixed_params" in this.system_attrs):  # (a retry has its params)
                trial.set_user_attr("surplus", True)
                raise SurplusTrialError()
        counts = count(self.study)
        ahead = sum(1 for t in trials if t.state.name == "RUNNING" and t.number < trial.number)
        if counts.finished + ahead >= self.budget:
            trial.set_user_attr("surplus", True)
            raise SurplusTrialError()
