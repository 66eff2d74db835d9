"""Every YAML block in the README is valid: configs as configs, sweep files as sweep files."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from nnx.config import validate
from nnx.sweep.spec import SweepSpec

README = Path(__file__).resolve().parent.parent / "README.md"


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)


def test_every_yaml_block_in_the_readme_is_valid() -> None:
    blocks = yaml_blocks()
    assert len(blocks) >= 2
    kinds = []
    for block in blocks:
        raw = yaml.safe_load(block)
        if "search" in raw:
            SweepSpec.model_validate(raw)
            kinds.append("sweep")
        else:
            validate(raw, "README.md")
            kinds.append("config")
    assert {"sweep", "config"} <= set(kinds)
