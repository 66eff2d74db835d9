"""The README: short, its links and figures traceable, its Python example run (its YAML blocks are
checked with the docs' in tests/test_docs.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_is_a_front_door() -> None:
    """Short, every link into the manual resolves, and every headline figure names the
    benchmark that reproduces it."""
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (README.parent / link).is_file(), f"README links to {link}, which is not there"
    figures = text.split("## Headline figures", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in figures.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 5
    for row in rows:
        script = re.search(r"`((?:benchmarks|scripts)/[\w.]+)", row)
        assert script and (README.parent / script[1]).is_file(), f"no benchmark named for: {row}"


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
