"""Run pytest as the GPU machine's image would: only its packages plus the carried wheels.

    python tests/device_image.py [pytest arguments]

Every import of an installed distribution that is neither on the image (DEVICE_IMAGE) nor listed in
scripts/gpu_wheels.txt raises ModuleNotFoundError, as it would there. tests/test_gpu_check.py uses
it to prove that `pytest -m gpu` collects every GPU test on that machine.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / "scripts" / "gpu_wheels.txt"

# The device image as its documentation lists it (Python 3.12 with cupy-cuda13x, numpy, typer, rich,
# pyyaml, pillow, pytest, torch), with the packages those bring along. typing-extensions is on it
# too, but is carried anyway so that pydantic gets the version it needs.
DEVICE_IMAGE = {
    "cupy-cuda13x", "numpy", "torch", "pyyaml", "pillow",
    "typer", "click", "shellingham", "annotated-doc",
    "rich", "markdown-it-py", "mdurl", "pygments",
    "pytest", "iniconfig", "pluggy", "packaging",
    "nnx",  # the working tree itself
}  # fmt: skip


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def carried() -> dict[str, str]:
    """{distribution: pinned version} from scripts/gpu_wheels.txt."""
    pins = {}
    for line in WHEELS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalize(name)] = version
    return pins


def blocked_modules() -> set[str]:
    """Top-level modules of installed distributions that the GPU machine would not have."""
    allowed = {normalize(d) for d in DEVICE_IMAGE} | set(carried())
    return {
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if not any(normalize(d) in allowed for d in dists)
    }


class NotOnTheImage(importlib.abc.MetaPathFinder):
    def __init__(self, blocked: set[str]) -> None:
        self.blocked = blocked

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201
        if fullname.split(".", 1)[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {fullname!r} (not on the GPU image)", name=fullname)
        return None


def main() -> int:
    sys.meta_path.insert(0, NotOnTheImage(blocked_modules()))
    import pytest

    return pytest.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
