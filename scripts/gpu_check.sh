#!/usr/bin/env bash
# On a GPU machine (no network): the GPU tests, then the GPU benchmark; a short table last.
# Needs the working tree plus .whl/ and .mnist/ from scripts/prepare_gpu_check.sh. Under 5 minutes;
# with --cnn it also times the CNN (nnx and PyTorch) and trains it once on the GPU (3 minutes more).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/nnx-gpu-check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if ! python3 -c "import pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"  # nnx straight from the working tree
export NNX_DATA_DIR="${NNX_DATA_DIR:-$PWD/.mnist}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import cupy, numpy; print('cupy', cupy.__version__, 'cuda runtime', cupy.cuda.runtime.runtimeGetVersion(), 'numpy', numpy.__version__)"

timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/pytest.log"
tests=${PIPESTATUS[0]}
timeout 200 python3 benchmarks/gpu_mlp.py --json "$out/bench.json" 2>&1 | tee "$out/bench.log"
bench=${PIPESTATUS[0]}
if [ "${1:-}" = "--cnn" ]; then
  timeout 60 python3 benchmarks/cnn.py speed --batches 100 2>&1 | tee "$out/cnn_speed.log"
  timeout 120 python3 benchmarks/cnn.py accuracy --seeds 0 --device gpu 2>&1 | tee "$out/cnn_accuracy.log"
fi
echo
tail -n 1 "$out/pytest.log"
sed -n '/^GPU:/,$p' "$out/bench.log"
[ -f "$out/cnn_speed.log" ] && cat "$out/cnn_speed.log"
[ -f "$out/cnn_accuracy.log" ] && tail -n 2 "$out/cnn_accuracy.log"
echo "gpu tests exit $tests, benchmark exit $bench"
exit $((tests != 0 || bench != 0))
