"""Every YAML block in the README is valid: configs as configs, sweep files as sweep files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from nnx.config import validate
from nnx.sweep.spec import SweepSpec

README = Path(__file__).resolve().parent.parent / "README.md"


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)


def test_every_yaml_block_in_the_readme_is_valid(tmp_path: Path) -> None:
    from nnx.config import load_config

    blocks = yaml_blocks()
    assert len(blocks) >= 2
    kinds = []
    for block in blocks:
        raw = yaml.safe_load(block)
        if "search" in raw:
            SweepSpec.model_validate(raw)
            kinds.append("sweep")
        elif "base" in raw:  # a config file on a base: read as `nnx train -c` reads it
            (tmp_path / "experiment.yaml").write_text(block)
            load_config(str(tmp_path / "experiment.yaml"))
            kinds.append("config on a base")
        else:
            validate(raw, "README.md")
            kinds.append("config")
    assert {"sweep", "config", "config on a base"} <= set(kinds)


@pytest.mark.mnist
def test_the_python_example_in_the_readme_runs(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (block,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    monkeypatch.chdir(tmp_path)  # its run directory lands in ./runs
    monkeypatch.setenv("NNX_DATA_DIR", str(mnist_dir))
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    assert namespace["run"].summary["test_accuracy"] > 0.9
    assert namespace["model"].predict(namespace["drawn"]).classes.shape == (1,)
    assert (tmp_path / "digits.onnx").stat().st_size > 0


def test_data_readme_lists_the_checksums_nnx_checks() -> None:
    from nnx.data.mnist import FILES

    text = (README.parent / "data" / "README.md").read_text()
    for file in FILES.values():
        assert file.archive_sha256 in text and file.sha256 in text and file.name in text
