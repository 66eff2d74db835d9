"""YAML configs: validated, typed, every error named by its dotted key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nnx.config import BUILTIN_CONFIGS, load_config, parse_yaml
from nnx.errors import ConfigError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def test_builtin_configs_load() -> None:
    config, path = load_config()
    assert path.name == "mnist_mlp.yaml"
    assert config.model.hidden == [64] and config.training.batch_size == 64
    seed, _ = load_config("seed")
    assert (seed.training.batch_size, seed.optimizer.lr, seed.training.epochs) == (1, 0.01, 10)
    assert seed.model.hidden == [64] and seed.optimizer.momentum == 0


def test_repo_configs_folder_is_the_packaged_one() -> None:
    repo_configs = Path(__file__).parent.parent / "configs"
    assert sorted(p.name for p in repo_configs.glob("*.yaml")) == sorted(p.name for p in BUILTIN_CONFIGS.glob("*.yaml"))


def test_good_file(tmp_path: Path) -> None:
    config, _ = load_config(write(tmp_path, "training:\n  epochs: 3\noptimizer:\n  lr: 0.5\n"))
    assert config.training.epochs == 3 and config.optimizer.lr == 0.5
    assert config.name == "run"  # the file's stem when the file names none


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"optimizer\.learning_rate: unknown key"):
        load_config(write(tmp_path, "optimizer:\n  learning_rate: 0.1\n"))


def test_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"training\.epochs: .*integer.*'many'"):
        load_config(write(tmp_path, "training:\n  epochs: many\n"))


def test_negative_lr(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"optimizer\.lr: Input should be greater than 0 \(got -0\.1\)"):
        load_config(write(tmp_path, "optimizer:\n  lr: -0.1\n"))


def test_batch_size_zero(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"training\.batch_size: Input should be greater than or equal to 1"):
        load_config(write(tmp_path, "training:\n  batch_size: 0\n"))


def test_all_errors_at_once_on_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "training:\n  batch_size: 0\n  epochs: -1\nmodel:\n  hiden: [3]\ndevice: tpu\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(path)
    for key in ("training.batch_size", "training.epochs", "model.hiden", "device"):
        assert key in message
    assert "\n" not in message


def test_set_overrides(tmp_path: Path) -> None:
    config, _ = load_config(None, ["optimizer.momentum=0.5", "model.hidden=[128, 32]", "dtype=float64", "data.dir=/x"])
    assert config.optimizer.momentum == 0.5
    assert config.model.hidden == [128, 32]
    assert config.dtype == "float64" and config.data.dir == "/x"


def test_flags_win_over_set(tmp_path: Path) -> None:
    config, _ = load_config(None, ["training.epochs=7"], {"training.epochs": 2, "optimizer.lr": None})
    assert config.training.epochs == 2 and config.optimizer.lr == 0.02


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("optimizer.lr", "expected key.path=value"),
        ("training.bogus=1", r"^--set training\.bogus=1: training\.bogus: unknown key$"),
        # A section the assignment created is its fault, not the config file's.
        ("a.b.c=1", r"^--set a\.b\.c=1: a: unknown key$"),
        ("training..epochs=3", r"^--set 'training\.\.epochs=3': 'training\.\.epochs' has an empty part"),
        ("training.=3", "has an empty part"),
        ("data.mirrors=[nope]", r"data\.mirrors: 'nope': not a URL nnx can fetch from \(https, http, ftp, file\)"),
        ("data.mirrors=[]", r"data\.mirrors: List should have at least 1 item"),
        ("optimizer.lr.x=1", "optimizer.lr is not a section"),
        ("optimizer.lr=[", "--set optimizer.lr: invalid YAML at line 1"),
        ("training.epochs=" + "[" * 3000, "--set training.epochs: nested too deeply to read"),
        ("training.epochs=" + "1" * 5000, r"--set training.epochs: a value YAML cannot convert \(Exceeds the limit"),
    ],
)
def test_bad_set(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [assignment])


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid YAML at line 3"):
        load_config(write(tmp_path, "training:\n  epochs: [1\n"))
    # What yaml.safe_load raises besides YAMLError: RecursionError, and ValueError from int() and dates.
    with pytest.raises(ConfigError, match="run.yaml: nested too deeply to read"):
        load_config(write(tmp_path, "model: " + "[" * 3000))
    with pytest.raises(ConfigError, match=r"run.yaml: a value YAML cannot convert \(Exceeds the limit \(4300 digits\)"):
        load_config(write(tmp_path, "training:\n  epochs: " + "9" * 5000))
    with pytest.raises(ConfigError, match=r"run.yaml: a value YAML cannot convert \(month must be in 1..12\)"):
        load_config(write(tmp_path, "name: 2026-13-45\n"))
    with pytest.raises(ConfigError, match=f"^{tmp_path}: not a config file"):
        load_config(str(tmp_path))
    with pytest.raises(ConfigError, match="^'': no such config file"):
        load_config("")
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


@pytest.mark.parametrize(
    "assignment,message",
    [
        ("optimizer.lr=.inf", "optimizer.lr: Input should be a finite number"),
        ("optimizer.lr=.nan", "optimizer.lr: Input should be a finite number"),
        ("optimizer.betas=[0.9, 1.0]", "optimizer.betas: each of the two betas must be in [0, 1)"),
        ("optimizer.weight_decay=-0.1", "optimizer.weight_decay: Input should be greater than or equal to 0"),
        ("optimizer.momentum=1.0", "optimizer.momentum: Input should be less than 1"),
        ("optimizer.eps=0", "optimizer.eps: Input should be greater than 0"),
        ("optimizer.clip_norm=0", "optimizer.clip_norm: Input should be greater than 0"),
    ],
)
def test_float_settings_must_be_finite_and_in_range(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [assignment])


def test_a_fractional_warm_up_never_raises_the_rate_above_the_setting() -> None:
    from nnx.optim import Schedule

    schedule = Schedule("none", warmup_epochs=2.5)
    rates = [schedule.lr(0.1, step, 1000, 7) for step in range(40)]  # 17.5 warm-up steps
    assert max(rates) == pytest.approx(0.1) and all(r <= 0.1 for r in rates)
    assert rates[0] == pytest.approx(0.1 / 17.5) and rates[20] == 0.1


def test_errors_name_the_command_line_setting_not_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["optimizer.lr=-1"], {"training.epochs": 0})
    message = str(info.value)
    assert "--set optimizer.lr=-1: optimizer.lr: Input should be greater than 0" in message
    assert "--epochs 0: training.epochs: Input should be greater than or equal to 1" in message
    assert "mnist_mlp.yaml" not in message


def test_a_config_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(str(path))


def test_a_config_file_can_stand_on_a_base(tmp_path: Path) -> None:
    """`base:` a built-in name or a path relative to the file: the file's keys over the base's,
    section by section; the name is the file's; a chain of bases is followed."""
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "slow.yaml").write_text("base: mnist_cnn\noptimizer: {lr: 0.002}\ntraining: {epochs: 2}\n")
    (tmp_path / "mlp.yaml").write_text("base: exp/slow.yaml\nmodel: {hidden: [128, 64]}\n")
    cnn, _ = load_config("mnist_cnn")
    slow, _ = load_config(str(tmp_path / "exp" / "slow.yaml"))
    assert slow.name == "slow" and slow.optimizer.lr == 0.002 and slow.training.epochs == 2
    assert slow.model == cnn.model and slow.optimizer.name == cnn.optimizer.name == "adam"
    assert slow.training.batch_size == cnn.training.batch_size  # the rest of the section: the base's
    mlp, _ = load_config(str(tmp_path / "mlp.yaml"))  # a network given replaces the base's network
    assert mlp.model.layers is None and mlp.model.hidden == [128, 64] and mlp.optimizer.lr == 0.002


@pytest.mark.parametrize(
    "text,message",
    [
        ("base: nope\n", r"a.yaml: base: nope: no such built-in config \(fashion_cnn, .*; or a path to a .yaml file\)"),
        ("base: ../none.yaml\n", r"a.yaml: base: .*none.yaml: no such config file"),
        ("base: [1]\n", r"a.yaml: base: expected a built-in config's name or a YAML file's path, got \[1\]"),
        ("base: b.yaml\n", r"b.yaml: base: a.yaml leads back to a config already read \(a.yaml -> b.yaml -> a.yaml\)"),
        ("base: c.yaml\n", r"a.yaml \(on .*c.yaml, mnist_mlp.yaml\): training.epochz: unknown key"),
    ],
)
def test_a_bad_base_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    (tmp_path / "c.yaml").write_text("base: mnist_mlp\ntraining: {epochz: 3}\n")  # the typo is in the base
    (tmp_path / "a.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(str(tmp_path / "a.yaml"))


def test_mlp_keys_beside_a_layer_list_are_refused_not_ignored() -> None:
    """`--set model.hidden=[128]` on a CNN config trained the CNN as if nothing was said: the layer
    list wins. A saved config (the defaults beside `layers`) still loads."""
    for assignment, given in [("model.hidden=[128]", "hidden [128]"), ("model.init=xavier", "init xavier"),
                              ("model.activation=tanh", "activation tanh")]:  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(f"--set {assignment}: model: {given} would be ignored")):
            load_config("mnist_cnn", [assignment])
    mlp, _ = load_config("mnist_cnn", ["model.hidden=[128]", "model.layers=null"])
    assert mlp.model.layers is None and mlp.model.hidden == [128]
    saved, _ = load_config("mnist_cnn", ["model.hidden=[64]", "model.init=he", "model.activation=relu"])
    assert saved.model.layers is not None


def test_a_saved_config_reads_back_the_same(tmp_path: Path) -> None:
    """What a run writes as config.yaml: a layer list without the MLP keys it would not use."""
    from nnx.config import to_yaml

    for name in ("mnist_cnn", "mnist_mlp"):
        config, _ = load_config(name)
        text = to_yaml(config)
        assert ("hidden:" in text) == (config.model.layers is None) and "base:" not in text
        again, _ = load_config(write(tmp_path, text))
        assert again == config


def test_early_stopping_without_a_validation_split_is_refused_before_training() -> None:
    """It was said after the first epoch, leaving a run directory without a checkpoint."""
    stopping = "training.early_stopping={metric: val_loss, patience: 2}"
    with pytest.raises(ConfigError, match=re.escape("training: early_stopping on val_loss needs a validation split")):
        load_config(None, ["training.validation=0", stopping])
    config, _ = load_config(None, [stopping])  # the default split: fine
    assert config.training.early_stopping.metric == "val_loss"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../../x", "no '/'"),  # made the run outside runs/
        ("a/b", "no '/'"),  # a folder inside another
        ("a\\b", "no '/'"),
        ("a\tb", "control characters"),
        ("  ", "empty"),
        ("x" * 201, "at most 200 bytes"),
    ],
)
def test_a_run_name_is_one_folder_name(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^--set .*name: .*{re.escape(message)}"):
        load_config(None, [f"name={json.dumps(name)}"])  # YAML reads JSON's escapes


def test_a_run_name_may_be_any_file_name(tmp_path: Path) -> None:
    path = tmp_path / "my net (v2), ünïcode.yaml"
    path.write_text("base: mnist_mlp\n")
    config, _ = load_config(str(path), [])
    assert config.name == "my net (v2), ünïcode"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("optimizer:\n  lr: 0.3\ntraining:\n  epochs: 1\noptimizer:\n  momentum: 0.5\n",
         "line 5 (optimizer: given twice, at lines 1 and 5)"),
        ("optimizer: {lr: 0.3, lr: 0.2}\n", "line 1 (lr: given twice)"),
    ],
)  # fmt: skip
def test_a_key_given_twice_is_refused_not_replaced(tmp_path: Path, text: str, message: str) -> None:
    """YAML keeps the last of two equal keys: the second optimizer: section dropped lr: 0.3."""
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: invalid YAML at {message}")):
        load_config(str(path))
    path.write_text("defaults: &d {lr: 0.3, momentum: 0.5}\noptimizer:\n  <<: *d\n  lr: 0.2\n")
    merged = parse_yaml(path.read_text(), "merge")  # a merge key's values may be overridden
    assert merged["optimizer"] == {"lr": 0.2, "momentum": 0.5}


def test_a_file_too_large_to_be_a_config_is_refused_unread(tmp_path: Path) -> None:
    """A 400 MB file given as a config was read and parsed whole: 100 s and 1.9 GB, then an error."""
    from nnx.config import MAX_CONFIG_BYTES

    path = tmp_path / "data.yaml"
    path.write_text("name: big\n" + "#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: over 1,048,576 bytes, which no config needs"):
        load_config(str(path))
    path.write_text("name: big\n" + "#" * (MAX_CONFIG_BYTES - 20))
    assert load_config(str(path))[0].name == "big"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("optimiser: {lr: 0.1}", "optimiser: unknown key (did you mean optimizer?)"),
        ("training: {epocs: 3}", "training.epocs: unknown key (did you mean epochs?)"),
        ("trainig: {epochs: 3}", "trainig: unknown key (did you mean training?)"),
        ("optimizer: {learning_rate: 0.1}", "optimizer.learning_rate: unknown key (did you mean lr?)"),
        ("training: {early_stopping: {patiense: 3}}",
         "training.early_stopping.patiense: unknown key (did you mean patience?)"),
        ("model: {layers: [{conv2d: {out: 8, kernal: 3}}, flatten, {linear: {out: 10}}]}",
         "0.conv2d.kernal: unknown key (did you mean kernel?)"),
        ("zzz: 1", "zzz: unknown key"),
    ],
)  # fmt: skip
def test_a_mistyped_key_gets_the_nearest_known_one(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    assert message in str(error.value)
    if "zzz" in text:
        assert "did you mean" not in str(error.value)


def test_a_sweep_file_given_as_a_config_points_to_nnx_sweep() -> None:
    from nnx.config import BUILTIN_CONFIGS

    sweep = next((BUILTIN_CONFIGS / "sweeps").glob("*.yaml"))
    with pytest.raises(ConfigError, match=r"a sweep file \(it has search:\), not a run's config: run it with `nnx sw"):
        load_config(str(sweep))


def test_a_mistyped_sweep_key_gets_the_nearest_known_one(tmp_path) -> None:
    from nnx.sweep.spec import read_sweep

    path = tmp_path / "s.yaml"
    path.write_text("name: s\ntrails: 3\nsearch: {optimizer.lr: {log_uniform: [0.01, 0.1], lgo: 1}}\n")
    with pytest.raises(ConfigError) as error:
        read_sweep(path)
    assert "trails: unknown key (did you mean trials?)" in str(error.value)
    assert "search.optimizer.lr.lgo: unknown key" in str(error.value)
