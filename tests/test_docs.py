"""The manual (docs/) and the README are executed, not just written: the reference pages are what
the code says, every command line parses with the real CLI, every YAML block validates, the
tutorials' commands and Python blocks run in order, and `mkdocs build --strict` passes with the
notebook executed."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from nnx.cli.app import app
from nnx.config import Config, load_config, validate
from nnx.sweep.spec import SweepSpec

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>[a-z]*)\n(?P<body>.*?)```", re.S)
SAVE_AS = re.compile(r"[Ss]ave this as `([^`]+)`")

# Tutorials whose commands run as written, in order, in a fresh folder; every `nnx train` also
# gets TRAIN_SMALL, so that a page runs in seconds rather than minutes.
RUN_PAGES = ["tutorials/train.md", "tutorials/export.md", "tutorials/cnn.md"]
TRAIN_SMALL = ["--set", "data.limit=2000", "--epochs", "1"]


def gen_reference():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "scripts" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def blocks(path: Path) -> list[tuple[str, str, str]]:
    """(language, body, the line before the block) for each fenced block, in order."""
    return [(m["lang"], m["body"], m["before"]) for m in BLOCK.finditer("\n" + path.read_text())]


def command_lines(body: str) -> list[list[str]]:
    """The nnx command lines of a shell block (after `mpiexec -n N` too), comments taken away."""
    lines = []
    for line in body.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["mpiexec"]:
            words = words[words.index("nnx") :] if "nnx" in words else []
        if words[:1] == ["nnx"]:
            lines.append(words[1:])
    return lines


def parse(args: list[str]) -> None:
    """Parse a command line with nnx's own CLI (flags, their values' types, arguments) without
    running it: click raises on an unknown flag, a missing value or a value of the wrong type."""
    command, name, context = typer.main.get_command(app), "nnx", None
    while True:
        context = command.make_context(name, list(args), parent=context)
        rest = [*getattr(context, "_protected_args", []), *context.args]
        if not hasattr(command, "commands") or not rest:
            return
        name, command, args = command.resolve_command(context, rest)


# ---------------------------------------------------------------------------------------------
# The reference pages


def test_the_reference_pages_are_what_the_code_says() -> None:
    for path, text in gen_reference().pages().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run python scripts/gen_reference.py"


def test_every_flag_argument_and_key_is_described() -> None:
    module = gen_reference()
    root = typer.main.get_command(app)
    undocumented = [
        f"{' '.join(path)} {param.name}"
        for path, command in module._commands(root, ["nnx"])
        for param in command.params
        if (module._is_option(param) or module._is_argument(param)) and not (param.help or "").strip()
    ]
    for model in (Config, SweepSpec):
        for key, field, sub in module.config_keys(model):
            if not (field.description or (sub and sub.__doc__)):
                undocumented.append(key)
    from nnx.config import LAYER_SCHEMAS

    for kind, schema in LAYER_SCHEMAS.items():
        undocumented += [f"{kind}.{n}" for n, f in schema.model_fields.items() if not f.description]
        if not schema.__doc__:
            undocumented.append(kind)
    assert not undocumented, f"give these a help text or a docstring: {undocumented}"


def test_every_command_and_flag_is_in_the_cli_reference() -> None:
    text = (DOCS / "reference" / "cli.md").read_text()
    for command, flags in gen_reference().cli_flags().items():
        section = text.split(f"## {command}\n", 1)[1].split("\n## ", 1)[0]
        missing = [flag for flag in flags if f"`{flag}`" not in section]
        assert not missing, f"{command}: {missing} not in docs/reference/cli.md"


def test_the_generated_reference_would_catch_a_new_undocumented_flag() -> None:
    """The staleness check is not vacuous: a page differs as soon as the app gains a flag."""
    module = gen_reference()
    before = module.cli_reference()

    @app.command("docs-probe")
    def probe(level: int = typer.Option(1, "--level", help="A flag no page describes.")) -> None: ...

    try:
        assert "--level" in module.cli_reference() and module.cli_reference() != before
    finally:
        app.registered_commands.pop()


# ---------------------------------------------------------------------------------------------
# Code blocks


def test_every_command_line_in_the_docs_and_the_readme_parses() -> None:
    checked = 0
    for path in [*PAGES, ROOT / "README.md"]:
        for lang, body, _ in blocks(path):
            if lang != "bash":
                continue
            for args in command_lines(body):
                try:
                    parse(args)
                except Exception as exc:  # click's usage errors: an unknown flag, a bad value
                    pytest.fail(f"{path.relative_to(ROOT)}: nnx {shlex.join(args)}: {exc}")
                checked += 1
    assert checked >= 40


def test_every_yaml_block_in_the_docs_and_the_readme_is_valid(tmp_path: Path) -> None:
    kinds = set()
    for path in [*PAGES, ROOT / "README.md"]:
        for lang, body, _ in blocks(path):
            if lang != "yaml":
                continue
            raw = yaml.safe_load(body)
            where = str(path.relative_to(ROOT))
            if "search" in raw:
                SweepSpec.model_validate(raw)
                kinds.add("sweep")
            elif "base" in raw:  # read as `nnx train -c` reads a file on a base
                (tmp_path / "experiment.yaml").write_text(body)
                load_config(str(tmp_path / "experiment.yaml"))
                kinds.add("config on a base")
            else:
                validate(raw, where)
                kinds.add("config")
    assert kinds == {"sweep", "config", "config on a base"}


def run_page(page: str, folder: Path) -> int:
    """Run a page's blocks in order in `folder`: shell blocks' nnx commands through the CLI,
    Python blocks in one namespace, and YAML blocks introduced by "save this as X" saved as X."""
    runner, namespace, ran = CliRunner(), {}, 0
    for lang, body, before in blocks(DOCS / page):
        if lang == "yaml" and SAVE_AS.search(before):
            (folder / SAVE_AS.search(before)[1]).write_text(body)
        elif lang == "bash":
            for args in command_lines(body):
                if args[:1] == ["train"]:
                    args = [*args, *TRAIN_SMALL]
                result = runner.invoke(app, args)
                assert result.exit_code == 0, f"{page}: nnx {shlex.join(args)}:\n{result.output}"
                ran += 1
        elif lang == "python":
            exec(compile(body, page, "exec"), namespace)  # noqa: S102 (our own docs)
            ran += 1
    return ran


@pytest.mark.heavy(8)
@pytest.mark.mnist
@pytest.mark.parametrize("page", RUN_PAGES)
def test_a_tutorial_runs_as_written(page: str, mnist_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NNX_DATA_DIR", str(mnist_dir))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mnist").symlink_to(mnist_dir)  # where the quick start puts it
    assert run_page(page, tmp_path) >= 2


@pytest.mark.heavy(3)
@pytest.mark.mnist
def test_the_python_guide_runs(mnist_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NNX_DATA_DIR", str(mnist_dir))
    namespace: dict = {}
    for lang, body, _ in blocks(DOCS / "how-to" / "python.md"):
        if lang == "python":
            exec(compile(body, "python.md", "exec"), namespace)  # noqa: S102 (our own docs)
    assert namespace["run"].summary["test_accuracy"] > 0.9
    assert (tmp_path / "digits.onnx").stat().st_size > 0
    assert [epoch for epoch, _ in namespace["curve"].points] == [1, 2]


# ---------------------------------------------------------------------------------------------
# The site


@pytest.mark.heavy(6)
@pytest.mark.mnist
def test_the_site_builds_strictly_with_the_notebook_executed(mnist_dir: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NNX_DATA_DIR": str(mnist_dir), "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for page in PAGES:
        html = site / page.relative_to(DOCS).with_suffix("") / "index.html"
        if page.name == "index.md":
            html = site / page.relative_to(DOCS).parent / "index.html"
        text = html.read_text()
        article = text.split('<article class="md-content__inner', 1)[1].split("</article>")[0]
        article = re.sub(r"<code>.*?</code>|<pre.*?</pre>", " ", article, flags=re.S)  # code shows markup on purpose
        body = re.sub(r"<[^>]+>", " ", article)
        assert len(body.split()) > 60, f"{html}: almost empty"
        for raw in ("```", "$$", ":::", "](", "\\("):  # markup that should have been rendered
            assert raw not in body, f"{page.relative_to(DOCS)}: raw {raw!r} in the built page"
    notebook = (site / "tutorials" / "python-api" / "index.html").read_text()
    assert notebook.count("<img") >= 2 and "test accuracy" in notebook  # its plots and output
    assert "Traceback" not in notebook
    assert (site / "explanations" / "math" / "index.html").read_text().count("<math") > 30
    api = (site / "reference" / "api" / "index.html").read_text()
    for name in ("nnx.api.train", "nnx.api.load", "nnx.api.Model", "nnx.optim.Adam", "nnx.nn.conv.Conv2D"):
        assert f'id="{name}"' in api, f"{name} missing from the API reference"
