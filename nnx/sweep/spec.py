"""The sweep file: what to search, validated at the edge like a config.

    name: cnn_lr
    base: mnist_cnn            # a built-in name, or a config path (beside this file first)
    metric: val_accuracy       # val_accuracy, val_loss or test_accuracy
    direction: maximize        # default: maximize for accuracies, minimize for val_loss
    trials: 40
    sampler: tpe               # tpe, random, grid (grid: choice lists only)
    pruner: median             # median, halving, none (on the per-epoch validation metric)
    search:
      optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}
      training.batch_size: {choice: [64, 128, 256]}

Every search key is a dotted config key; the ends of each range and every choice are checked
against the base config before anything runs, so a sweep never starts with a value its trials
would refuse.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nnx.config import BUILTIN_CONFIGS, Config, _describe, names_a_file, parse_yaml, read_file_text
from nnx.errors import ConfigError

KINDS = ("uniform", "log_uniform", "int", "log_int", "choice")
FIELDS = {"uniform": "uniform", "log_uniform": "log_uniform", "int": "int_", "log_int": "log_int", "choice": "choice"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SearchSpace(BaseModel):
    """One searched key: exactly one of the kinds, e.g. {log_uniform: [1e-4, 1e-1]}."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    uniform: tuple[float, float] | None = None
    """[low, high]: a float drawn uniformly."""
    log_uniform: tuple[float, float] | None = None
    """[low, high], both > 0: a float drawn uniformly in log space (learning rates)."""
    int_: tuple[int, int] | None = Field(None, alias="int")  # not `int`: that would shadow the type
    """[low, high]: an integer, both ends included."""
    log_int: tuple[int, int] | None = None
    """[low, high], both > 0: an integer drawn in log space (layer sizes)."""
    choice: list[Any] | None = None
    """A list of values (any YAML: numbers, strings, lists); grid search takes every one."""

    @model_validator(mode="after")
    def _one_kind(self) -> SearchSpace:
        given = [k for k in KINDS if getattr(self, FIELDS[k]) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)}")
        kind = given[0]
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice needs at least one value")
        else:
            low, high = getattr(self, FIELDS[kind])
            if not low < high:
                raise ValueError(f"{kind} needs low < high (got [{low}, {high}])")
            if kind.startswith("log") and low <= 0:
                raise ValueError(f"{kind} needs 0 < low (got {low})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, FIELDS[k]) is not None)

    @property
    def bounds(self) -> tuple[Any, Any]:
        return getattr(self, FIELDS[self.kind])

    def samples(self) -> list[Any]:
        """The values to check against the config: both ends of a range, every choice."""
        return list(self.choice) if self.kind == "choice" else list(self.bounds)

    def suggest(self, trial: Any, key: str) -> Any:
        """Ask an Optuna trial for a value. Optuna's categorical choices must be scalars, so a list
        choice (e.g. model.hidden: [[64], [256, 128]]) travels as its JSON text."""
        kind = self.kind
        if kind == "choice":
            if all(_scalar(c) for c in self.choice):
                return trial.suggest_categorical(key, self.choice)
            return json.loads(trial.suggest_categorical(key, [json.dumps(c) for c in self.choice]))
        low, high = self.bounds
        if kind in ("uniform", "log_uniform"):
            return trial.suggest_float(key, low, high, log=kind == "log_uniform")
        return trial.suggest_int(key, low, high, log=kind == "log_int")

    def grid_values(self) -> list[Any]:
        return [c if _scalar(c) else json.dumps(c) for c in self.choice]


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


class SweepSpec(BaseModel):
    """A sweep file: which config to start from, what to search and how to judge the trials."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    name: str
    """Names the sweep's folder (runs/<name>/) and its Optuna study."""
    base: str = "mnist_mlp"
    """The config every trial starts from: a built-in name, or a path (beside this file first)."""
    metric: Literal["val_accuracy", "val_loss", "test_accuracy"] = "val_accuracy"
    """What a trial is judged by."""
    direction: Literal["maximize", "minimize"] | None = None
    """null: maximize for the accuracies, minimize for val_loss."""
    trials: int = Field(20, ge=1, le=100_000)
    """Trials to finish, over all workers and continuations."""
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    """How Optuna proposes values (grid: choice lists only)."""
    pruner: Literal["median", "halving", "none"] = "median"
    """Stops trials whose per-epoch validation metric lags the others'."""
    seed: int = Field(0, ge=0)
    """The sampler's seed."""
    heartbeat: int = Field(10, ge=1, le=3600)
    """Seconds between a running trial's heartbeats; a trial silent for 3 of them (its worker was
    killed) is marked failed and retried once."""
    storage_patience: int = Field(60, ge=0, le=86_400)
    """Seconds a worker keeps retrying a storage that fails (a database server restarting, a
    network blip, a full disk), waiting longer each time, before the sweep stops with one line;
    0 stops at the first failure."""
    search: dict[str, SearchSpace] = Field(min_length=1)
    """Dotted config key -> its search space (one of the kinds below)."""

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not NAME.match(name):
            raise ValueError("use letters, digits, '.', '_' and '-' (it names the sweep's folder)")
        return name

    @model_validator(mode="after")
    def _direction_and_grid(self) -> SweepSpec:
        if self.direction is None:
            self.direction = "minimize" if self.metric == "val_loss" else "maximize"
        if self.sampler == "grid":
            ranges = [k for k, s in self.search.items() if s.kind != "choice"]
            if ranges:
                raise ValueError(f"sampler grid needs choice lists; {', '.join(ranges)} is a range")
        return self

    @property
    def pruning_metric(self) -> str:
        """What each epoch reports to the pruner: the validation counterpart of the metric."""
        return "val_loss" if self.metric == "val_loss" else "val_accuracy"


def resolve_sweep_path(name_or_path: str | Path) -> Path:
    """A sweep file's path, or the name of a built-in one (configs/sweeps/NAME.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = BUILTIN_CONFIGS / "sweeps" / f"{name_or_path}.yaml"
    if "/" not in str(name_or_path) and builtin.is_file():
        return builtin
    known = ", ".join(sorted(p.stem for p in (BUILTIN_CONFIGS / "sweeps").glob("*.yaml")))
    raise ConfigError(f"{name_or_path}: no such sweep file (built-in sweeps: {known})")


def base_config(spec: SweepSpec, path: Path) -> str:
    """The config a sweep's trials start from: its `base` beside the sweep file at `path` when it
    names a file there (as a config file's own `base:` is read), else as written (a built-in name,
    or a path from the working directory)."""
    beside = path.parent / spec.base
    if names_a_file(spec.base) and beside.is_file():
        return str(beside)
    return spec.base


def read_sweep(path: Path) -> SweepSpec:
    """Read and validate a sweep file: every problem on one line naming the file and key."""
    raw = parse_yaml(read_file_text(path), str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (name, base, metric, trials, search...)")
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + "; ".join(_describe(e, model=SweepSpec) for e in exc.errors())) from None


def check_against_config(spec: SweepSpec, path: Path, base: Config, resolve: Any) -> None:
    """Every end of every range and every choice, set on the base config, must validate; and the
    metric must be one the runs produce. `resolve(overrides)` validates a config."""
    problems = []
    for key, space in spec.search.items():
        for value in space.samples():
            try:
                resolve({key: value})
            except ConfigError as exc:
                detail = str(exc).split(": ", 1)[-1]
                problems.append(f"search.{key}: {value!r} is refused by the config ({detail})")
                break
    if spec.metric.startswith("val_") and base.training.validation == 0:
        problems.append(f"metric {spec.metric}: the runs have no validation split (training.validation is 0)")
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))


def export_config(config: dict[str, Any], name: str) -> str:
    """A trial's resolved config as YAML that `nnx train -c` reproduces (data.dir and output left
    to the machine that runs it)."""
    config = json.loads(json.dumps(config))
    config["name"] = name
    config["output"] = None
    config.setdefault("data", {})["dir"] = None
    Config.model_validate(config)
    return yaml.safe_dump(config, sort_keys=False)
