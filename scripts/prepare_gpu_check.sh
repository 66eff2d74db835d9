#!/usr/bin/env bash
# Run here (with network to PyPI) before scripts/gpu_check.sh goes to a GPU machine that has no
# network: fetches into .whl/ the wheels of scripts/gpu_wheels.txt for the device's Python 3.12 (with
# nothing missing: each wheel's requirements are checked against the set and the device image), and
# copies MNIST into .mnist/. Both are git-ignored; carry them with the run: carry [".whl", ".mnist"].
set -euo pipefail
cd "$(dirname "$0")/.."
mnist="${NNX_DATA_DIR:-../shared/data/mnist}"
rm -rf .whl .mnist && mkdir -p .whl .mnist
mapfile -t pins < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' scripts/gpu_wheels.txt)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
python3 scripts/check_wheels.py .whl
cp "$mnist"/*-ubyte.gz .mnist/
du -sh .whl .mnist
