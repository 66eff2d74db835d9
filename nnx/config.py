"""Run configuration: YAML -> a validated, typed `Config`.

Every error names the dotted key and what was expected, and all errors are reported at once.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nnx.errors import ConfigError

BUILTIN_CONFIGS = Path(__file__).parent / "configs"
DEFAULT_CONFIG = "mnist_mlp"
# A folder name is at most 255 bytes on common file systems; the run's time stamp and a suffix
# take up to 24 of them.
NAME_BYTES = 200
# Config and sweep files are a few KB; anything this large is the wrong file.
MAX_CONFIG_BYTES = 1 << 20


class Strict(BaseModel):
    # No unknown keys; and no inf or nan in a float setting (lr: .inf would pass lr > 0).
    # The docstring under each field is its description: the config reference is generated from it.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)


class DataConfig(Strict):
    """Where the images come from and how pixels become numbers."""

    dataset: Literal["mnist", "fashion-mnist", "kmnist"] = "mnist"
    """Which dataset (all in MNIST's IDX format); its class names come with it."""
    dir: str | None = None
    """The dataset's folder; null: `--data-dir`, then `$NNX_DATA_DIR`, then `./data/mnist`."""
    normalize: Literal["standard", "unit"] = "standard"
    """standard: (x/255 - 0.1307) / 0.3081 (MNIST's mean and std); unit: x/255."""
    limit: int | None = Field(None, ge=1)
    """Train on only the first N training images (quick experiments); null: all of them."""
    train_csv: str | None = None
    """The seed project's CSV training file (a label then 784 pixels a row); give test_csv too.
    A data directory holding mnist_train.csv and mnist_test.csv is read as CSV without these."""
    test_csv: str | None = None
    """The CSV test file, with train_csv."""
    mirrors: list[str] | None = Field(None, min_length=1)
    """Base URLs to download a missing dataset from, tried in order (https, http, ftp or
    file:///folder/); null: the dataset's known mirrors."""

    @field_validator("mirrors")
    @classmethod
    def _urls(cls, mirrors: list[str] | None) -> list[str] | None:
        from nnx.data.download import mirror_problem

        for mirror in mirrors or []:
            problem = mirror_problem(mirror)
            if problem:
                raise ValueError(f"{mirror!r}: {problem}")
        return mirrors

    @model_validator(mode="after")
    def _both_csv(self) -> DataConfig:
        if (self.train_csv is None) != (self.test_csv is None):
            raise ValueError("give both train_csv and test_csv, or neither")
        return self


Init = Literal["he", "xavier", "uniform"]
Activation = Literal["relu", "sigmoid", "tanh", "leaky_relu", "elu", "gelu"]


# One schema per layer type, for `model.layers`: `- relu`, `- conv2d: {out: 32, padding: 1}`.
class LinearLayer(Strict):
    """A fully connected layer: y = x W + b."""

    out: int = Field(ge=1)
    """Output features."""
    init: Init = "he"
    """Initial weights: he N(0, 2/fan_in), xavier U(-a, a) with a = sqrt(6/(fan_in+fan_out)), uniform U(-0.5, 0.5)."""


class Conv2DLayer(Strict):
    """A 2-D convolution over (N, C, H, W) images."""

    out: int = Field(ge=1)
    """Output channels."""
    kernel: int = Field(3, ge=1)
    """Kernel height and width."""
    stride: int = Field(1, ge=1)
    """Step between windows."""
    padding: int = Field(0, ge=0)
    """Zeros added on each side."""
    init: Init = "he"
    """Initial weights, as for linear."""


class PoolLayer(Strict):
    """Max or average pooling over size x size windows."""

    size: int = Field(2, ge=1)
    """Window height and width."""
    stride: int | None = Field(None, ge=1)
    """Step between windows; null: the window's size."""


class DropoutLayer(Strict):
    """Inverted dropout while training; nothing at inference."""

    p: float = Field(0.5, ge=0, lt=1)
    """Probability that an activation is zeroed."""


class BatchNormLayer(Strict):
    """Batch normalisation (per feature after linear, per channel after conv2d)."""

    momentum: float = Field(0.1, gt=0, le=1)
    """Weight of each batch in the running statistics used at inference."""
    eps: float = Field(1e-5, gt=0)
    """Added to the variance before its square root."""


class AlphaLayer(Strict):
    """An activation with one parameter: leaky_relu (default 0.01), elu (default 1.0)."""

    alpha: float = Field(gt=0)
    """leaky_relu: the slope for x < 0; elu: the limit -alpha for x -> -inf."""


class NoOptions(Strict):
    """A layer with no options."""


LAYER_SCHEMAS: dict[str, type[Strict]] = {
    "linear": LinearLayer,
    "conv2d": Conv2DLayer,
    "maxpool2d": PoolLayer,
    "avgpool2d": PoolLayer,
    "dropout": DropoutLayer,
    "batchnorm": BatchNormLayer,
    "leaky_relu": AlphaLayer,
    "elu": AlphaLayer,
    **{kind: NoOptions for kind in ("relu", "sigmoid", "tanh", "gelu", "flatten", "softmax")},
}
DEFAULT_ALPHA = {"leaky_relu": 0.01, "elu": 1.0}


def _normalise_layer(index: int, item: Any) -> dict[str, Any]:
    """`relu` or `{conv2d: {out: 32}}` -> {"type": "conv2d", "out": 32, ...defaults}."""
    if isinstance(item, str):
        kind, options = item, {}
    elif isinstance(item, dict) and "type" in item:  # the resolved form a run's config.yaml holds
        kind, options = item["type"], {k: v for k, v in item.items() if k != "type"}
    elif isinstance(item, dict) and len(item) == 1:
        kind, options = next(iter(item.items()))
        options = options or {}
    else:
        raise ValueError(f"layer {index}: expected a name (relu) or one mapping (conv2d: {{out: 32}})")
    if kind not in LAYER_SCHEMAS:
        raise ValueError(f"layer {index}: unknown layer type {kind!r} (known: {', '.join(LAYER_SCHEMAS)})")
    if not isinstance(options, dict):
        raise ValueError(f"layer {index} ({kind}): options must be a mapping, got {options!r}")
    if kind in DEFAULT_ALPHA:
        options = {"alpha": DEFAULT_ALPHA[kind], **options}
    try:
        parsed = LAYER_SCHEMAS[kind].model_validate(options)
    except ValidationError as exc:
        problems = "; ".join(_describe(e, f"{index}.{kind}", LAYER_SCHEMAS[kind]) for e in exc.errors())
        raise ValueError(problems) from None
    return {"type": kind, **parsed.model_dump(exclude_none=True)}


# ModelConfig's keys for the MLP of `hidden`, with their defaults (what a saved config holds).
MLP_ONLY: dict[str, Any] = {"hidden": [64], "activation": "relu", "init": "he"}


class ModelConfig(Strict):
    """An MLP by its hidden sizes, or any network as a list of layers (which then wins)."""

    hidden: list[int] = Field(default_factory=lambda: [64])
    """The MLP's hidden layer sizes: [64] is 784 -> 64 -> 10."""
    activation: Activation = "relu"
    """The MLP's activation after each hidden layer."""
    init: Init = "he"
    """The MLP's initial weights: he, xavier or uniform (the seed's U(-0.5, 0.5))."""
    layers: list[Any] | None = None
    """Any network as a list of layers (see the layer table); null: the MLP of `hidden`."""

    @field_validator("hidden")
    @classmethod
    def _positive(cls, sizes: list[int]) -> list[int]:
        if any(size < 1 for size in sizes):
            raise ValueError("every hidden size must be >= 1")
        return sizes

    @field_validator("layers")
    @classmethod
    def _layers(cls, layers: list[Any] | None) -> list[Any] | None:
        if layers is None:
            return None
        if not layers:
            raise ValueError("needs at least one layer")
        return [_normalise_layer(i, item) for i, item in enumerate(layers)]

    @model_validator(mode="after")
    def _one_network(self) -> ModelConfig:
        """hidden, activation and init shape the MLP only: given beside `layers`, which wins, they
        would be ignored without a word (`--set model.hidden=[128]` on a CNN config)."""
        if self.layers is None:
            return self
        ignored = [name for name, default in MLP_ONLY.items()
                   if name in self.model_fields_set and getattr(self, name) != default]  # fmt: skip
        if ignored:
            given = ", ".join(f"{name} {getattr(self, name)}" for name in ignored)
            raise ValueError(
                f"{given} would be ignored: model.layers gives the network (each layer its own init); "
                "remove it, or set model.layers to null for an MLP"
            )
        return self

    def layer_specs(self) -> list[dict[str, Any]]:
        if self.layers is not None:
            return [dict(layer) for layer in self.layers]
        specs: list[dict[str, Any]] = []
        for size in self.hidden:
            specs += [{"type": "linear", "out": size, "init": self.init}, {"type": self.activation}]
        return [*specs, {"type": "linear", "out": 10, "init": self.init}]


class OptimizerConfig(Strict):
    """How gradients become updates: see nnx.optim for the update rules."""

    name: Literal["sgd", "adam", "adamw", "rmsprop"] = "sgd"
    """The update rule."""
    lr: float = Field(0.1, gt=0)
    """Learning rate (a schedule's peak)."""
    momentum: float = Field(0.0, ge=0, lt=1)
    """sgd: velocity v <- momentum v + g."""
    nesterov: bool = False
    """sgd: Nesterov's look-ahead momentum."""
    betas: tuple[float, float] = (0.9, 0.999)
    """adam, adamw: decay of the first and second moment estimates, each in [0, 1)."""
    rho: float = Field(0.99, gt=0, lt=1)
    """rmsprop: decay of the mean square."""
    eps: float = Field(1e-8, gt=0)
    """adam, adamw, rmsprop: added to the root mean square in the denominator."""
    weight_decay: float = Field(0.0, ge=0)
    """L2 penalty added to the gradient (decoupled, on the weights, for adamw)."""
    clip_norm: float | None = Field(None, gt=0)
    """Clip the gradients to this global L2 norm; null: no clipping."""

    @field_validator("betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError("each of the two betas must be in [0, 1)")
        return betas


class ScheduleConfig(Strict):
    """Learning rate per batch: see nnx.optim.Schedule for the formulas."""

    name: Literal["none", "step", "exponential", "cosine", "onecycle"] = "none"
    """The schedule's shape."""
    warmup_epochs: float = Field(0.0, ge=0)
    """A linear ramp from 0 to lr over this many epochs first."""
    step_epochs: int = Field(1, ge=1)
    """step: multiply by gamma every this many epochs."""
    gamma: float = Field(0.1, gt=0, le=1)
    """step, exponential: the factor."""
    pct_start: float = Field(0.3, gt=0, lt=1)
    """onecycle: the fraction of the run spent rising to lr."""
    div_factor: float = Field(25.0, ge=1)
    """onecycle: the run starts at lr / div_factor."""
    final_div_factor: float = Field(1e4, ge=1)
    """onecycle: the run ends at lr / (div_factor * final_div_factor)."""


class EarlyStoppingConfig(Strict):
    """Stop when the validation metric stops improving, and keep the best epoch's weights."""

    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    """What must improve."""
    patience: int = Field(5, ge=1)
    """Epochs without improvement before stopping."""
    min_delta: float = Field(0.0, ge=0)
    """The least change that counts as an improvement."""


class ElasticConfig(Strict):
    """Simard et al. (2003)'s elastic distortion: a random displacement at every pixel, uniform in
    [-1, 1], smoothed by a Gaussian of width sigma and scaled by alpha (pixels). Their MNIST
    figures used alpha 34, sigma 4."""

    alpha: float = Field(34.0, gt=0, le=100)
    """Scale of the smoothed displacement field, in pixels."""
    sigma: float = Field(4.0, ge=0.5, le=28)
    """Width of the Gaussian that smooths it, in pixels."""


class AugmentConfig(Strict):
    """Random shifts and rotations of each training image, on the device, and optionally an
    elastic distortion; off by default."""

    enabled: bool = False
    """Augment the training images."""
    max_shift: int = Field(2, ge=0, le=8)
    """Largest shift in each direction, in pixels."""
    max_rotation: float = Field(10.0, ge=0, le=45)
    """Largest rotation either way, in degrees."""
    elastic: ElasticConfig | None = None
    """An elastic distortion as well ({alpha: 34, sigma: 4}); null: none."""

    @model_validator(mode="after")
    def _elastic_needs_enabled(self) -> AugmentConfig:
        if self.elastic is not None and not self.enabled:
            raise ValueError("elastic distortions are augmentation: set training.augment.enabled: true too")
        return self


class TrainingConfig(Strict):
    """The loop: epochs, batches, the seed every random number comes from, and what it writes."""

    epochs: int = Field(10, ge=1)
    """Passes over the training images."""
    batch_size: int = Field(64, ge=1)
    """Images per step (the global batch in a data-parallel run)."""
    seed: int = Field(0, ge=0)
    """Initial weights, batch order, dropout and augmentation are all functions of it."""
    validation: int = Field(5000, ge=0)
    """The last N training images are held out for validation; 0: train on all of them."""
    early_stopping: EarlyStoppingConfig | None = None
    """Stop early on the validation metric; null: train every epoch."""
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    """Random changes to each training image."""
    sync_batchnorm: bool = False
    """Data-parallel runs: batch norm statistics over the whole global batch, not each rank's rows."""
    log: list[Literal["tensorboard", "csv"]] = Field(default_factory=list)
    """Logs other tools read, in the run directory: TensorBoard event files, metrics.csv."""

    @model_validator(mode="after")
    def _early_stopping_needs_validation(self) -> TrainingConfig:
        """Said before training, not after the first epoch, which left a run without a checkpoint."""
        if self.early_stopping is not None and self.validation == 0:
            raise ValueError(
                f"early_stopping on {self.early_stopping.metric} needs a validation split: set training.validation > 0"
            )
        return self


class Config(Strict):
    """A training run: a config file is this mapping in YAML."""

    name: str = "run"
    """Names the run's folder (runs/<time>-<name>)."""
    device: str = "cpu"
    """cpu, gpu, gpu:N or auto (a GPU where one is usable, else the CPU)."""
    dtype: Literal["float32", "float64"] = "float32"
    """The floating-point type of parameters and activations."""
    allow_tf32: bool = False
    """GPU: let float32 matrix products use TF32 tensor cores (faster, 10-bit mantissa)."""
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    output: str | None = None
    """The run directory; null: runs/<time>-<name>."""

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        d = device.strip().lower()
        if d in ("cpu", "gpu", "auto") or (d.startswith("gpu:") and d[4:].isdigit()):
            return d
        raise ValueError("expected cpu, gpu, gpu:N or auto")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        """It names the run's folder (runs/<time>-<name>): one folder name, not a path ("../x" made
        the run outside runs/, "a/b" a folder inside another)."""
        if not name.strip():
            raise ValueError("expected a name for the run's folder, got an empty one")
        if "/" in name or "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise ValueError("it names the run's folder: no '/', '\\' or control characters")
        if len(name.encode()) > NAME_BYTES:
            raise ValueError(f"it names the run's folder: at most {NAME_BYTES} bytes")
        return name


# Names other tools and tutorials use for nnx's keys: suggested when such a key is unknown.
KEY_SYNONYMS = {
    "learning_rate": "lr", "learningrate": "lr", "optimiser": "optimizer", "optim": "optimizer",
    "lr_schedule": "schedule", "scheduler": "schedule", "num_epochs": "epochs", "n_epochs": "epochs",
    "batchsize": "batch_size", "batch": "batch_size", "weight_decay_rate": "weight_decay",
    "hidden_layers": "hidden", "hidden_sizes": "hidden", "layer": "layers", "val": "validation",
    "validation_size": "validation", "activation_function": "activation", "augmentation": "augment",
    "num_trials": "trials", "n_trials": "trials", "objective": "metric", "space": "search",
}  # fmt: skip


def _fields_at(model: type[BaseModel] | None, path: list[Any]) -> list[str]:
    """The keys a mapping at `path` (dotted parts) inside `model` may hold, or [] when the path
    leaves the models (a list, a free mapping)."""
    free_key = False  # the next part is a key of a mapping of models (a sweep's search:)
    for part in path:
        if free_key:
            free_key = False
            continue
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
        free_key = typing.get_origin(annotation) is dict
        candidates = typing.get_args(annotation) or (annotation,)
        model = next((t for t in candidates if isinstance(t, type) and issubclass(t, BaseModel)), None)
    if model is None or free_key:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def suggestion(key: str, known: list[str]) -> str:
    """ " (did you mean X?)" for a key or value close to one of `known`, or a known synonym; else ""."""
    close = [KEY_SYNONYMS[key.lower()]] if KEY_SYNONYMS.get(key.lower()) in known else []
    close = close or difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.7)
    return f" (did you mean {close[0]}?)" if close else ""


def _describe(error: dict[str, Any], prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One problem of a pydantic validation of `model`, as `key: what is wrong`; an unknown key with
    the nearest known one."""
    key = ".".join(str(part) for part in ([prefix] if prefix else []) + list(error["loc"])) or "(top level)"
    if error["type"] == "extra_forbidden":
        loc = list(error["loc"])
        hint = suggestion(str(loc[-1]), _fields_at(model, loc[:-1])) if loc else ""
        return f"{key}: unknown key{hint}"
    value = error.get("input")
    shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
    message = error["msg"].removeprefix("Value error, ")
    return f"{key}: {message}{shown}"


def _sections(key: str) -> list[str]:
    """The sections holding a dotted key: "a.b.c" -> ["a", "a.b"]."""
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def validate(raw: dict[str, Any], source: str, assigned: dict[str, str] | None = None) -> Config:
    """A Config from `raw`, or one ConfigError listing every problem. `assigned` maps dotted keys
    set on the command line to how they were given (`--set k=v`, `--lr`): a problem with one of
    them names that, not the YAML file."""
    if isinstance(raw, dict) and "search" in raw and ("trials" in raw or "sampler" in raw or "metric" in raw):
        raise ConfigError(f"{source}: a sweep file (it has search:), not a run's config: run it with `nnx sweep FILE`")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems, from_file = [], []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"])
            # The key itself, a key within it, or a section it created (--set a.b=1: "a: unknown key").
            related = [v for k, v in (assigned or {}).items() if key in (k, *_sections(k)) or k in _sections(key)]
            given = related[0] if related else None
            problem = _describe(error, model=Config)
            (problems if given else from_file).append(f"{given}: {problem}" if given else problem)
        message = "; ".join(problems + ([f"{source}: " + "; ".join(from_file)] if from_file else []))
        raise ConfigError(message) from None


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
    # configs/mnist_cnn.yaml, as the README writes it, outside a clone of the repository: the
    # built-in of that name (the clone's configs/ folder holds the same files).
    if path.parent.name == "configs" and path.suffix == ".yaml" and (BUILTIN_CONFIGS / path.name).is_file():
        return BUILTIN_CONFIGS / path.name
    known = ", ".join(sorted(p.stem for p in BUILTIN_CONFIGS.glob("*.yaml")))
    shown = name_or_path or "''"
    if name_or_path and path.exists():  # a folder, /dev/zero: there, but not a file to read
        raise ConfigError(f"{shown}: not a config file (built-in configs: {known})")
    raise ConfigError(f"{shown}: no such config file (built-in configs: {known})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: the second silently replaced
    the first (a second `optimizer:` section dropped the lr set in the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`, which keys may override
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = lines.get(key)
            except TypeError:  # an unhashable key: the base class says so
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"{key}: given twice" + (f", at lines {first} and {line}" if first != line else ""),
                    key_node.start_mark,
                )
            lines[key] = line
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str) -> Any:
    """yaml.safe_load(text), with every way it fails a ConfigError naming `where`; a key given
    twice in one mapping is refused."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}: invalid YAML{at} ({getattr(exc, 'problem', exc)})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to read") from None
    except ValueError as exc:  # an integer of over 4,300 digits; a date such as 2026-13-45
        raise ConfigError(f"{where}: a value YAML cannot convert ({str(exc).split(';')[0]})") from None


def read_file_text(path: Path) -> str:
    """A config or sweep file's text: UTF-8, at most MAX_CONFIG_BYTES (a wrong path, a data file,
    was read whole and parsed: 400 MB took 100 s and 1.9 GB before its error)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path}: over {MAX_CONFIG_BYTES:,} bytes, which no config needs; is it the file you meant?"
            )
        return data.decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def read_yaml(path: Path) -> dict[str, Any]:
    raw = parse_yaml(read_file_text(path), str(path))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    return raw


def _dotted(key: str) -> bool:
    """A dotted key without an empty part: "training.epochs", not "training..epochs" or "a."."""
    return all(part.strip() for part in key.split("."))


def parse_assignment(assignment: str) -> tuple[str, Any]:
    """`key.path=value` -> (key.path, value parsed as YAML)."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected key.path=value")
    if not _dotted(key):
        raise ConfigError(f"--set {assignment!r}: {key!r} has an empty part; expected key.path=value")
    if not text.strip():
        return key, None
    return key, parse_yaml(text, f"--set {key}")


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


# The typed flags of `nnx train`, by the key each sets (to name them in errors).
FLAGS = {
    "training.epochs": "--epochs", "training.batch_size": "--batch-size", "optimizer.lr": "--lr", "device": "--device",
    "training.seed": "--seed", "dtype": "--dtype", "data.dir": "--data-dir",
}  # fmt: skip


def load_config(
    name_or_path: str | None = None,
    assignments: list[str] | tuple[str, ...] = (),
    flags: dict[str, Any] | None = None,
) -> tuple[Config, Path]:
    """Read a config, apply `--set key.path=value` assignments in order, then typed flags
    (--epochs and friends, which win), and validate everything at once."""
    path = resolve_config_path(name_or_path)
    raw, bases = _read_with_bases(path)
    assigned = apply_overrides(raw, assignments, flags)
    source = str(path) + (f" (on {', '.join(bases)})" if bases else "")  # an error may come from a base
    return validate(raw, source, assigned), path


def read_config_file(path: Path) -> dict[str, Any]:
    """A config file's keys, on top of the config its `base:` names, if any (a built-in name, or a
    path relative to the file): an experiment is its base plus what it changes. Sections merge key
    by key and any other value (a list too) replaces the base's; a file that gives the network
    (model.hidden or model.layers) replaces the base's network. Bases may have bases; a loop is
    refused. The name defaults to the file's own, not its base's."""
    return _read_with_bases(path)[0]


def _read_with_bases(path: Path) -> tuple[dict[str, Any], list[str]]:
    """read_config_file's keys, and the files of the bases it stands on, nearest first."""
    raw = read_yaml(path)
    raw.setdefault("name", path.stem)
    seen, bases = [path.resolve()], []
    while "base" in raw:
        base = raw.pop("base")
        base_path = _base_path(base, path)
        if base_path.resolve() in seen:
            chain = " -> ".join(p.name for p in [*seen, base_path.resolve()])
            raise ConfigError(f"{path}: base: {base} leads back to a config already read ({chain})")
        seen.append(base_path.resolve())
        bases.append(base_path.name if base_path.parent == BUILTIN_CONFIGS else str(base_path))
        raw = _merged(read_yaml(base_path), raw)
        path = base_path
    return raw, bases


def names_a_file(base: str) -> bool:
    """Whether a `base:` names a YAML file (a / or a .yaml suffix) rather than a built-in config."""
    return "/" in base or base.endswith((".yaml", ".yml"))


def _base_path(base: Any, path: Path) -> Path:
    """The file `base:` names in the config file at `path`: a path (names_a_file) relative to that
    file's folder, or a built-in config's name."""
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base: expected a built-in config's name or a YAML file's path, got {base!r}")
    if names_a_file(base):
        candidate = path.parent / base
        if not candidate.is_file():
            raise ConfigError(f"{path}: base: {candidate}: no such config file")
        return candidate
    builtin = BUILTIN_CONFIGS / f"{base}.yaml"
    if not builtin.is_file():
        known = ", ".join(sorted(p.stem for p in BUILTIN_CONFIGS.glob("*.yaml")))
        raise ConfigError(f"{path}: base: {base}: no such built-in config ({known}; or a path to a .yaml file)")
    return builtin


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`: sections merged key by key, anything else replaced."""
    merged = dict(base)
    if isinstance(base.get("model"), dict) and isinstance(top.get("model"), dict):
        if "layers" in top["model"] or any(key in top["model"] for key in MLP_ONLY):  # another network
            merged["model"] = {k: v for k, v in base["model"].items() if k != "layers" and k not in MLP_ONLY}
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_overrides(
    raw: dict[str, Any], assignments: list[str] | tuple[str, ...] = (), flags: dict[str, Any] | None = None
) -> dict[str, str]:
    """Set `--set key.path=value` assignments in order, then typed flags (which win), on `raw`;
    returns how each key was given, for `validate` to name it in errors."""
    check_overrides(flags)
    assigned = {}
    for assignment in assignments:
        key, value = parse_assignment(assignment)
        set_key(raw, key, value)
        assigned[key] = f"--set {assignment}"
    for key, value in (flags or {}).items():
        if not isinstance(key, str) or not _dotted(key):
            raise ConfigError(f"overrides: {key!r} is not a dotted key such as 'training.epochs'")
        if value is not None:
            set_key(raw, key, value)
            assigned[key] = f"{FLAGS[key]} {value}" if key in FLAGS else f"{key}={value!r}"
    return assigned


def check_overrides(overrides: Any) -> None:
    """From Python, `overrides` is a dict; a string there failed deep inside with AttributeError."""
    if overrides is not None and not isinstance(overrides, dict):
        kind = type(overrides).__name__
        raise ConfigError(
            f"overrides: expected a dict by dotted key ({{'training.epochs': 3}}), got a {kind}; "
            "'training.epochs=3' strings go in assignments="
        )


def to_yaml(config: Config) -> str:
    """The config as YAML; a network given as `layers` without the MLP keys it does not use."""
    data = config.model_dump(mode="json")
    if data["model"].get("layers") is not None:
        for key in MLP_ONLY:
            data["model"].pop(key, None)
    return yaml.safe_dump(data, sort_keys=False)
