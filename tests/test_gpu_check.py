"""The GPU check is fail-safe before it ever meets a GPU: GPU machines are lent rarely and briefly,
so what scripts/gpu_check.sh does there is proved here, without one.

- `pytest -m gpu` collects every GPU test with only the device image's packages plus the carried
  wheels (tests/device_image.py blocks the rest), and the carried wheels bring all they need;
- a skipped GPU test fails where NNX_REQUIRE_GPU is set, and in CI no other test may skip;
- the script keeps to its time budget, prints its summary last and fails loudly when a step
  fails or times out.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))
from check_wheels import check  # noqa: E402
from device_image import carried  # noqa: E402


def run(args: list[str], env_changes: dict[str, str | None] | None = None, timeout: float = 120):
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONDONTWRITEBYTECODE="1")
    for key, value in (env_changes or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def collected_gpu_tests(on_device_image: bool) -> list[str]:
    runner = [sys.executable, "tests/device_image.py"] if on_device_image else [sys.executable, "-m", "pytest"]
    # -o addopts=-rfEs: one process, as on the device image, which has no pytest-xdist for the -n in pyproject
    args = ["--collect-only", "-q", "-o", "addopts=-rfEs", "-m", "gpu or multigpu", "-p", "no:cacheprovider", "tests"]
    result = run([*runner, *args], {"CI": None})
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_every_gpu_test_is_collected_on_the_device_image() -> None:
    everywhere = collected_gpu_tests(on_device_image=False)
    on_device = collected_gpu_tests(on_device_image=True)
    assert len(everywhere) >= 60
    assert on_device == everywhere


def test_the_device_image_lacks_what_it_lacks() -> None:
    assert importlib.util.find_spec("fastapi") is not None, "fastapi is installed here (the dev extra)"
    args = [sys.executable, "tests/device_image.py", "-q", "-o", "addopts=-rfEs", "--co", "-p", "no:cacheprovider"]
    args.append("tests/test_web.py")
    blocked = run(args, {"CI": None})
    assert "No module named 'fastapi' (not on the GPU image)" in blocked.stdout + blocked.stderr


def fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> None:
    dist = name.replace("-", "_")
    with zipfile.ZipFile(folder / f"{dist}-{version}-py3-none-any.whl", "w") as archive:
        lines = [f"Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]  # noqa: F541
        archive.writestr(f"{dist}-{version}.dist-info/METADATA", "\n".join(lines + requires) + "\n")


def carried_wheels(folder: Path, leave_out: str | None = None) -> None:
    """Wheels standing for scripts/gpu_wheels.txt, each requiring what the installed distribution of
    that name requires (names and markers: the versions here may be newer than the pins)."""
    from packaging.requirements import Requirement

    for name, version in carried().items():
        if name == leave_out:
            continue
        requires = []
        for line in importlib.metadata.metadata(name).get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            marker = f"; {requirement.marker}" if requirement.marker else ""
            requires.append(f"Requires-Dist: {requirement.name}{marker}")
        fake_wheel(folder, name, version, requires)


def test_the_carried_wheels_bring_every_requirement(tmp_path: Path) -> None:
    assert {"pydantic", "pydantic-core", "typing-extensions", "mpi4py", "mpich"} <= set(carried())
    carried_wheels(tmp_path)
    assert check(tmp_path) == []


def test_a_missing_requirement_is_named(tmp_path: Path) -> None:
    carried_wheels(tmp_path, leave_out="typing-extensions")
    problems = check(tmp_path)
    assert any("needs typing-extensions" in p and "neither carried nor on the image" in p for p in problems)
    assert any("typing-extensions==" in p and "no wheel" in p for p in problems)


def test_a_wheel_for_another_python_is_refused(tmp_path: Path) -> None:
    carried_wheels(tmp_path)
    fake_wheel(tmp_path, "extra", "1.0", [])
    (tmp_path / "extra-1.0-py3-none-any.whl").rename(tmp_path / "extra-1.0-cp311-cp311-manylinux_2_17_x86_64.whl")
    problems = check(tmp_path)
    assert any("extra-1.0-cp311" in p and "not for CPython 3.12" in p for p in problems)


def test_the_prepare_script_fetches_the_pinned_wheels_for_python_3_12() -> None:
    script = (ROOT / "scripts" / "prepare_gpu_check.sh").read_text()
    assert "scripts/gpu_wheels.txt" in script and "--python-version 3.12" in script
    assert "scripts/check_wheels.py" in script


GPU_TEST = "tests/test_gpu_parity.py::test_tf32_is_off_by_default"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the GPU check runs on Linux")
def test_a_skipped_gpu_test_fails_where_a_gpu_is_required() -> None:
    if "cupy" in sys.modules or importlib.util.find_spec("cupy") is not None:
        pytest.fail("this test expects a machine without CuPy (CI); on a GPU machine gpu_check.sh runs")
    args = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=-rfEs", "-p", "no:cacheprovider", GPU_TEST]
    allowed = run(args, {"NNX_REQUIRE_GPU": None, "CI": None})
    assert allowed.returncode == 0 and "1 skipped" in allowed.stdout
    required = run(args, {"NNX_REQUIRE_GPU": "1", "CI": None})
    assert required.returncode == 1
    assert "skipped, but NNX_REQUIRE_GPU is set: no usable GPU" in required.stdout


def test_in_ci_no_test_may_skip() -> None:
    """A module skipped at import (here test_web.py without fastapi, on the device image) fails in CI."""
    args = [sys.executable, "tests/device_image.py", "-q", "-o", "addopts=-rfEs", "-p", "no:cacheprovider"]
    args.append("tests/test_web.py")
    outside = run(args, {"CI": None})
    assert outside.returncode in (0, 5) and "1 skipped" in outside.stdout  # 5: nothing else collected
    in_ci = run(args, {"CI": "true"})
    assert in_ci.returncode != 0
    assert "skipped, but CI is set: every test that needs no GPU must run" in in_ci.stdout


def gpu_check(tmp_path: Path, budget: int, *steps: str, path_prefix: Path | None = None):
    env = {"OUT": str(tmp_path / "out"), "NNX_CHECK_BUDGET": str(budget), "CI": None}
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}:{os.environ['PATH']}"
    started = time.monotonic()
    result = run(["bash", "scripts/gpu_check.sh", *steps], env, timeout=budget + 60)
    return result, time.monotonic() - started


def test_gpu_check_without_a_gpu_fails_loudly_with_the_summary_last(tmp_path: Path) -> None:
    result, seconds = gpu_check(tmp_path, 60)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("RESULT: FAILED")
    table = "\n".join(lines[lines.index("| step | result | seconds |") :])
    assert re.search(r"\| GPU backend \| FAILED", table)
    assert re.search(r"\| pytest -m gpu \| FAILED \(exit 1\): .*errors? in", table)
    assert "| benchmark mlp | NOT RUN: no usable GPU |" in table and "| benchmark cnn | NOT RUN" in table
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "summary.txt" in files and len(files) <= 7
    assert (tmp_path / "out" / "summary.txt").read_text().strip().splitlines()[-1] == lines[-1]
    assert seconds < 60


@pytest.mark.heavy(20)
def test_gpu_check_keeps_to_its_budget_when_a_step_hangs(tmp_path: Path) -> None:
    """pytest hangs (a stand-in python3 sleeps): the step times out within the budget and the
    summary still comes last."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text(
        f'#!/bin/bash\nif [ "$1 $2" = "-m pytest" ]; then exec sleep 300; fi\nexec {sys.executable} "$@"\n'
    )
    (fake / "python3").chmod(0o755)
    result, seconds = gpu_check(tmp_path, 30, "tests", path_prefix=fake)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("RESULT: FAILED")
    assert any(re.fullmatch(r"\| pytest -m gpu \| TIMED OUT after \d+ s.*", line) for line in lines)
    assert seconds < 30


def test_the_readme_gives_the_exact_device_call() -> None:
    readme = (ROOT / "README.md").read_text()
    call = re.search(r"run\(command=\"(?P<command>[^\"]+)\", carry=\[(?P<carry>[^\]]*)\], timeout_s=(\d+)\)", readme)
    assert call, "README: the device run call for scripts/gpu_check.sh"
    assert len(call["command"]) < 2000 and call["command"].startswith("bash scripts/gpu_check.sh")
    assert call["carry"] == '".whl", ".mnist"' and int(call[3]) > 480  # the script's own budget
    ignored = subprocess.run(["git", "check-ignore", ".whl/x.whl", ".mnist/x"], cwd=ROOT, capture_output=True)
    assert ignored.returncode == 0, "the carried folders must be git-ignored"
