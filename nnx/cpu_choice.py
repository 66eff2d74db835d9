"""Which CPU code trains a network here: chosen by measuring it on this machine, and remembered.

Three ways to run a training step on the CPU compute the same thing:

- `numpy`: NumPy's chains for the elementwise work, BLAS for the matrix products;
- `compiled`: Numba's fused loops (nnx/cpu_kernels.py) instead of the chains, BLAS's products;
- `tiles`: the compiled loops, and nnx's own AVX-512 float32 products (nnx/cpu_products.py)
  instead of BLAS's, for networks without convolutions on CPUs with AVX-512;

and a network with wide 3x3 convolutions (cpu_ops.winograd_candidate) can run them by im2col and
BLAS's products or by Winograd's F(2x2, 3x3) (nnx/nn/winograd.py): `numpy+winograd`,
`compiled+winograd`. They differ in the last bits (sums in another order: the tiles' products and
Winograd's transforms from BLAS's im2col products, the compiled loss's from NumPy's), so a run
keeps its path when it resumes.

Which is fastest depends on the CPU, on BLAS and the kernels it picked, on the thread count and
on the network and batch, so nothing here assumes an answer: a run's candidates are timed on its
own network and batch (a few training steps each on synthetic data, alternating, best of several
rounds), and the figures are kept in a cache file keyed by a description of this machine
(`host()`), so each network is measured once per machine.

The choice then projects the run's training time from the figures. Numba's candidates must
shorten the run by at least MIN_SAVING_SECONDS and by MIN_SAVING_FRACTION of a step: they cost
memory (Numba and LLVM add about 100 MB to the process), time to load (about 0.3 s from Numba's
cache) and, the first time on a machine, seconds to compile. The tiles must beat BLAS's products,
and Winograd im2col, by MIN_TILES_FRACTION. A run that could not gain MIN_SAVING_SECONDS even if
Numba saved MAX_SAVING_FRACTION of each NumPy step is not measured at all: it stays on NumPy (by
im2col), and Numba is never imported. `NNX_CPU_PATH` sets the path instead; NNX_NUMBA=0 and
NNX_PRODUCTS=blas rule out Numba and the tiles.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from nnx import __version__
from nnx.atomic import write_atomic
from nnx.errors import BackendError

PATHS = ("numpy", "compiled", "tiles")
ENV = "NNX_CPU_PATH"

# A Numba path must save at least this much of a run's training time, and this fraction of a step.
MIN_SAVING_SECONDS = 2.0
MIN_SAVING_FRACTION = 0.05
# No Numba path is measured for a run in which saving this fraction of every NumPy step would not
# reach MIN_SAVING_SECONDS: above what any network was measured to save (the README's CPU paths).
MAX_SAVING_FRACTION = 0.5
# The tiles must be this much faster a step than the compiled loops on BLAS's products, and
# Winograd than im2col.
MIN_TILES_FRACTION = 0.02
WINOGRAD = "+winograd"
# Measuring: rounds of about ROUND_SECONDS per candidate, alternating; each candidate's figure is
# its best round (the others met the machine's other work).
ROUNDS = 5
ROUND_SECONDS = 0.04
MAX_ROUND_STEPS = 64
CACHE_FILE = "cpu-paths.json"
CACHE_VERSION = 1


def forced_path() -> str | None:
    """The path NNX_CPU_PATH sets (None for "auto" or unset); an unknown value is one error line."""
    value = os.environ.get(ENV, "auto").strip().lower()
    if value in ("", "auto"):
        return None
    known = [*PATHS, *(path + WINOGRAD for path in PATHS if path != "tiles")]
    if value not in known:
        close = difflib.get_close_matches(value, [*known, "auto"], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise BackendError(f"{ENV}={value}: not a CPU path{hint}; use auto, {', '.join(known)}")
    return value


def numba_installed() -> bool:
    try:
        metadata.version("numba")
    except metadata.PackageNotFoundError:
        return False
    return True


def cpu_candidates(dtype: str, convolutions: bool, winograd: bool = False) -> list[str]:
    """The paths a network can take here, numpy first: Numba's where it is installed and not turned
    off (NNX_NUMBA=0), the tiles for float32 networks without convolutions on CPUs with AVX-512
    (convolutions spread their work over nnx's own threads, whose Numba threads would compete),
    unless NNX_PRODUCTS=blas; each with Winograd's convolutions too where the network has
    candidates for them (`winograd`). Read without importing Numba."""
    from nnx.cpu_ops import numba_turned_off, products_turned_off

    candidates = ["numpy"]
    if not numba_turned_off() and numba_installed():
        candidates.append("compiled")
        if dtype == "float32" and not convolutions and not products_turned_off() and _has_avx512():
            candidates.append("tiles")
    if winograd:
        candidates += [path + WINOGRAD for path in candidates if path != "tiles"]
    return candidates


def _has_avx512() -> bool:
    isa = _isa()
    if isa != platform.machine():  # read from /proc/cpuinfo
        return "avx512f" in isa.split()
    from nnx.cpu_ops import cpu_has_avx512

    return cpu_has_avx512()


def cache_dir() -> Path:
    """$NNX_CACHE_DIR, else $XDG_CACHE_HOME/nnx, else ~/.cache/nnx."""
    if os.environ.get("NNX_CACHE_DIR"):
        return Path(os.environ["NNX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nnx"


def _cpu_model() -> str:
    """The CPU's model name, with its family and model numbers where /proc/cpuinfo has them (a
    virtual machine may name a whole line of CPUs alike: "AMD EPYC")."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if not line.strip():
                    break  # the first processor's block
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def _isa() -> str:
    """The vector extensions that decide which kernels run (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return platform.machine()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")
    return " ".join(flag for flag in wanted if flag in flags) or platform.machine()


def host(threads: int) -> dict[str, Any]:
    """What decides which path is fastest here: the CPU, BLAS and its kernels, the threads, the
    versions of the code that runs, and the environment variables that change any of them."""
    from nnx.cpu_ops import blas_kernels

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES") if k in os.environ}
    return {
        "cpu": _cpu_model(),
        "isa": _isa(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "blas": blas_kernels(),
        "numpy": np.__version__,
        "numba": version("numba"),
        "nnx": __version__,
        "env": env,
    }


def host_key(description: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Choice:
    """The path a run takes, and why: the figures it was chosen from (seconds per step)."""

    path: str
    reason: str
    step_seconds: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    source: str = "measured"  # measured, cache, NNX_CPU_PATH, checkpoint, short run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(step_seconds: dict[str, float], steps: int) -> tuple[str, str]:
    """(path, reason) for a run of `steps` steps from the measured seconds per step of each
    candidate (numpy always among them): the fastest of NumPy's (with Winograd's convolutions or
    not), unless one of Numba's saves enough to pay for itself."""

    def faster(a: str | None, b: str) -> str | None:
        """b where it is measured and beats a by MIN_TILES_FRACTION, else a."""
        if b not in step_seconds or (a is not None and step_seconds[b] > step_seconds[a] * (1 - MIN_TILES_FRACTION)):
            return a
        return b

    lean = faster("numpy", "numpy" + WINOGRAD)
    path = faster(faster(faster(None, "compiled"), "compiled" + WINOGRAD), "tiles") or lean
    numpy_step, step = step_seconds[lean], step_seconds[path]
    figures = ", ".join(f"{name} {1e3 * s:.3g} ms" for name, s in step_seconds.items())
    saving = steps * (numpy_step - step)
    if path == lean:
        return lean, f"a step: {figures}"
    if saving < MIN_SAVING_SECONDS or step > numpy_step * (1 - MIN_SAVING_FRACTION):
        return lean, (
            f"a step: {figures}; {path} would save {saving:.2f} s of {steps * numpy_step:.2f} s, "
            f"less than Numba's load and memory are worth (>= {MIN_SAVING_SECONDS:g} s and "
            f"{MIN_SAVING_FRACTION:.0%} of a step)"
        )
    return path, f"a step: {figures}; saves {saving:.2f} s of {steps * numpy_step:.2f} s"


def measure(candidates: list[str], make_runner: Callable[[str], Callable[[int], float]]) -> dict[str, float]:
    """Seconds per step of each candidate. make_runner(path) -> run(k), which trains k steps and
    returns the seconds per step. Each runs once first (Numba's loading or compiling, first
    allocations), then in alternating rounds of about ROUND_SECONDS; each figure is the
    candidate's best round."""
    runners = {path: make_runner(path) for path in candidates}
    for run in runners.values():  # the first steps: Numba's loading, the first allocations
        run(1)
    per_step = {path: run(1) for path, run in runners.items()}
    k = {path: max(1, min(MAX_ROUND_STEPS, int(ROUND_SECONDS / max(s, 1e-6)))) for path, s in per_step.items()}
    rounds: dict[str, list[float]] = {path: [] for path in candidates}
    for _ in range(ROUNDS):
        for path, run in runners.items():
            rounds[path].append(run(k[path]))
    return {path: min(times) for path, times in rounds.items()}


class Cache:
    """Measured figures per machine (host_key) and network (a caller's key), in one JSON file.
    A cache that cannot be read or written is an empty one (every run measures again)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / CACHE_FILE

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if (
            not isinstance(data, dict)
            or data.get("version") != CACHE_VERSION
            or not isinstance(data.get("hosts"), dict)
        ):
            return {}
        return data

    def get(self, host_description: dict[str, Any], network: str) -> dict[str, float] | None:
        entry = self.read().get("hosts", {}).get(host_key(host_description), {}).get("networks", {}).get(network)
        if not isinstance(entry, dict):
            return None
        figures = entry.get("step_seconds")
        if not isinstance(figures, dict) or "numpy" not in figures:
            return None
        if not all(name in PATHS and isinstance(s, (int, float)) and s > 0 for name, s in figures.items()):
            return None
        return {name: float(s) for name, s in figures.items()}

    def put(self, host_description: dict[str, Any], network: str, step_seconds: dict[str, float]) -> bool:
        data = self.read() or {"version": CACHE_VERSION, "hosts": {}}
        entry = data["hosts"].setdefault(host_key(host_description), {"host": host_description, "networks": {}})
        entry["networks"][network] = {
            "step_seconds": step_seconds,
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        try:
            write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True).encode())
        except Exception:  # a read-only or full cache folder: measured again next time
            return False
        return True

    def hosts(self) -> list[dict[str, Any]]:
        """Every machine's entry: {"host": description, "networks": {network: figures}}."""
        return [e for e in self.read().get("hosts", {}).values() if isinstance(e, dict)]


def choose(
    network: str,
    candidates: list[str],
    steps: int,
    threads: int,
    make_runner: Callable[[str], Callable[[int], float]],
    cache: Cache | None = None,
) -> Choice:
    """The path for a run of `steps` steps of `network` (a key naming the network, its batch and
    optimizer) among `candidates` (numpy first; the others where they can run here)."""
    forced = forced_path()
    if forced is not None:
        base = forced.partition("+")[0]
        fallbacks = (forced, base + WINOGRAD, base, "compiled", "numpy")  # nearest first (tiles need Numba too)
        path = next(option for option in fallbacks if option in candidates)
        why = f"{ENV}={forced}" + ("" if path == forced else f", which cannot run here: {path}")
        return Choice(path, why, steps=steps, source=ENV)
    if candidates == ["numpy"]:
        return Choice("numpy", "the only path here (no Numba, or NNX_NUMBA=0)", steps=steps, source="only")
    cache = cache or Cache()
    description = host(threads)
    figures = cache.get(description, network) or {}
    source = "cache"
    if not set(candidates) <= set(figures):
        if "numpy" not in figures:  # a first look, kept too: most runs end here
            figures = {"numpy": statistics.median(_quick(make_runner("numpy")))}
            cache.put(description, network, figures)
        numpy_step = figures["numpy"]
        if steps * numpy_step * MAX_SAVING_FRACTION < MIN_SAVING_SECONDS:
            return Choice(
                "numpy",
                f"{steps} steps of {1e3 * numpy_step:.3g} ms on NumPy's chains: too short for a Numba "
                f"path to save {MIN_SAVING_SECONDS:g} s",
                {"numpy": numpy_step},
                steps,
                "short run",
            )
        figures = measure(candidates, make_runner)
        cache.put(description, network, figures)
        source = "measured"
    figures = {path: figures[path] for path in candidates}
    path, reason = decide(figures, steps)
    return Choice(path, reason, figures, steps, source)


def _quick(run: Callable[[int], float]) -> list[float]:
    """Three short timings of the NumPy path (after one to warm it): enough to tell a short run."""
    run(1)
    return [run(4) for _ in range(3)]
