"""Check a folder of wheels for the GPU machine: one wheel per pin of scripts/gpu_wheels.txt, each
for CPython 3.12 (or pure Python) on x86-64 Linux, and every requirement of each wheel (for Python
3.12) either among the wheels or on the device image (tests/device_image.py's DEVICE_IMAGE).

    python3 scripts/check_wheels.py .whl
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from device_image import DEVICE_IMAGE, carried, normalize  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402
from packaging.utils import parse_wheel_filename  # noqa: E402

PY312 = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
         "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
         "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}  # fmt: skip


def requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        lines = archive.read(metadata).decode().splitlines()
    needed = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in needed if r.marker is None or r.marker.evaluate(PY312)]


def fits_the_device(tag) -> bool:  # noqa: ANN001
    """CPython 3.12 on x86-64 Linux (manylinux), or pure Python."""
    python = tag.interpreter in ("cp312", "py3", "py312")
    abi = tag.abi in ("cp312", "abi3", "none")
    platform = tag.platform == "any" or (tag.platform.startswith(("manylinux", "linux")) and "x86_64" in tag.platform)
    return python and abi and platform


def check(folder: Path, pins: dict[str, str] | None = None) -> list[str]:
    problems = []
    pins = carried() if pins is None else pins
    wheels = {}
    for wheel in sorted(folder.glob("*.whl")):
        name, version, _, tags = parse_wheel_filename(wheel.name)
        wheels[normalize(name)] = (wheel, str(version))
        if not any(fits_the_device(t) for t in tags):
            problems.append(f"{wheel.name}: not for CPython 3.12 on x86-64 Linux")
    for name, version in pins.items():
        if name not in wheels:
            problems.append(f"{name}=={version}: pinned in scripts/gpu_wheels.txt but no wheel in {folder}")
        elif wheels[name][1] != version:
            problems.append(f"{name}: wheel {wheels[name][1]}, pinned {version}")
    extra = sorted(set(wheels) - set(pins))
    if extra:
        problems.append(f"wheels not pinned in scripts/gpu_wheels.txt: {', '.join(extra)}")
    have = {normalize(d) for d in DEVICE_IMAGE} | set(wheels)
    for wheel, _ in wheels.values():
        for requirement in requirements(wheel):
            wanted = normalize(requirement.name)
            if wanted not in have:
                problems.append(f"{wheel.name} needs {requirement}, which is neither carried nor on the image")
            elif wanted in wheels and not requirement.specifier.contains(wheels[wanted][1], prereleases=True):
                problems.append(f"{wheel.name} needs {requirement}; the carried wheel is {wheels[wanted][1]}")
    return problems


if __name__ == "__main__":
    found = check(Path(sys.argv[1] if len(sys.argv) > 1 else ".whl"))
    for line in found:
        print(f"error: {line}", file=sys.stderr)
    if not found:
        print("wheels: complete for Python 3.12 on the device image")
    sys.exit(2 if found else 0)
