#!/usr/bin/env bash
# Rehearse the GPU check here, before a lent GPU's minutes are spent on it: a Python 3.12 venv with
# only what the device image has (numpy, typer, rich, pyyaml, pillow, pytest; no pydantic), then
# scripts/gpu_check.sh's tests step with the carried wheels. Without a GPU every GPU test must fail
# with "skipped, but NNX_REQUIRE_GPU is set" - and nothing else: no import or collection error.
# Needs Python 3.12 (python3.12, or PYTHON312=/path/to/it) and network to PyPI; run
# scripts/prepare_gpu_check.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/py312"
"${PYTHON312:-python3.12}" -m venv "$venv"
"$venv/bin/pip" install -q numpy pyyaml pillow pytest rich click shellingham typing-extensions
"$venv/bin/pip" install -q --no-deps "typer<0.13"  # an older typer, without a pydantic requirement
out="$(mktemp -d)"
PATH="$venv/bin:$PATH" OUT="$out" NNX_CHECK_BUDGET=200 bash scripts/gpu_check.sh tests || true
if grep -E "ModuleNotFoundError|ImportError|errors? during collection" "$out/pytest.log"; then
  echo "REHEARSAL FAILED: an import or collection error on the device image's packages" >&2
  exit 1
fi
collected=$(grep -c "skipped, but NNX_REQUIRE_GPU is set" "$out/pytest.log" || true)
echo "rehearsal ok: $collected GPU tests collected and run (each failing only for want of a GPU)"
