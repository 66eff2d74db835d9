#!/usr/bin/env bash
# Run here (with network to PyPI) before scripts/gpu_check.sh is sent to a GPU machine that has
# no network: fetches the wheels nnx needs that the GPU image lacks into .whl/, and copies MNIST
# into .mnist/ (both git-ignored; carry them with the run: carry [".whl", ".mnist"]).
set -euo pipefail
cd "$(dirname "$0")/.."
mnist="${NNX_DATA_DIR:-../shared/data/mnist}"
rm -rf .whl .mnist && mkdir -p .whl .mnist
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.8.0" "typing-inspection==0.4.5"
cp "$mnist"/*-ubyte.gz .mnist/
ls -la .whl .mnist
