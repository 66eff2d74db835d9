"""Run configuration: YAML -> a validated, typed `Config`.

Every error names the dotted key and what was expected, and all errors are reported at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nnx.errors import ConfigError

BUILTIN_CONFIGS = Path(__file__).parent / "configs"
DEFAULT_CONFIG = "mnist_mlp"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    dir: str | None = None
    # standard: (x/255 - 0.1307) / 0.3081 (MNIST's mean and std); unit: x/255.
    normalize: Literal["standard", "unit"] = "standard"


class ModelConfig(Strict):
    hidden: list[int] = Field(default_factory=lambda: [64])
    activation: Literal["relu", "sigmoid", "tanh"] = "relu"
    init: Literal["he", "xavier", "uniform"] = "he"

    @field_validator("hidden")
    @classmethod
    def _positive(cls, sizes: list[int]) -> list[int]:
        if any(size < 1 for size in sizes):
            raise ValueError("every hidden size must be >= 1")
        return sizes


class OptimizerConfig(Strict):
    name: Literal["sgd"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    # none: constant lr; cosine: lr * (1 + cos(pi t / T)) / 2 over the whole run, per batch.
    schedule: Literal["none", "cosine"] = "none"


class TrainingConfig(Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    seed: int = Field(0, ge=0)
    validation: int = Field(5000, ge=0)


class Config(Strict):
    name: str = "run"
    device: str = "cpu"
    dtype: Literal["float32", "float64"] = "float32"
    allow_tf32: bool = False
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    output: str | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        d = device.strip().lower()
        if d in ("cpu", "gpu", "auto") or (d.startswith("gpu:") and d[4:].isdigit()):
            return d
        raise ValueError("expected cpu, gpu, gpu:N or auto")


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    message = error["msg"].removeprefix("Value error, ")
    return f"{key}: {message}{shown}"


def validate(raw: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def resolve_config_path(name_or_path: str | None) -> Path:
    """A path to a YAML file, or the name of a built-in config ("mnist_mlp", "seed")."""
    if name_or_path is None:
        name_or_path = DEFAULT_CONFIG
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = BUILTIN_CONFIGS / f"{name_or_path}.yaml"
    if "/" not in name_or_path and builtin.is_file():
        return builtin
    known = ", ".join(sorted(p.stem for p in BUILTIN_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"{name_or_path}: no such config file (built-in configs: {known})")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where} ({getattr(exc, 'problem', exc)})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    return raw


def parse_assignment(assignment: str) -> tuple[str, Any]:
    """`key.path=value` -> (key.path, value parsed as YAML)."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected key.path=value")
    try:
        return key, (yaml.safe_load(text) if text.strip() else None)
    except yaml.YAMLError:
        raise ConfigError(f"--set {assignment!r}: the value is not valid YAML") from None


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """raw["a"]["b"] = value for key "a.b", creating sections as needed."""
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(
    name_or_path: str | None = None,
    assignments: list[str] | tuple[str, ...] = (),
    flags: dict[str, Any] | None = None,
) -> tuple[Config, Path]:
    """Read a config, apply `--set key.path=value` assignments in order, then typed flags
    (--epochs and friends, which win), and validate everything at once."""
    path = resolve_config_path(name_or_path)
    raw = read_yaml(path)
    raw.setdefault("name", path.stem)
    for assignment in assignments:
        set_key(raw, *parse_assignment(assignment))
    for key, value in (flags or {}).items():
        if value is not None:
            set_key(raw, key, value)
    return validate(raw, str(path)), path


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
