#!/usr/bin/env bash
# The GPU check, as one device command on a GPU machine that has no network:
#   bash scripts/gpu_check.sh [tests] [mlp] [cnn] [profile]      (no argument: all four)
# tests: every GPU test (pytest -m "gpu or multigpu"), where a skipped GPU test is a failure
# (NNX_REQUIRE_GPU=1; a multigpu test may skip on a machine with one GPU);
# mlp: benchmarks/gpu_mlp.py (MLP epochs on CPU and GPU beside PyTorch, time to 97.5%);
# cnn: benchmarks/cnn.py gpu (CNN epoch beside PyTorch, time to 99%);
# profile: benchmarks/profile_layers.py --device gpu (each layer's GPU time beside the host's time
# to issue it: what holds a missed target back), run only with 30 s or more of the budget left.
# Needs the working tree plus .whl/ and .mnist/ from scripts/prepare_gpu_check.sh (carried).
# The whole script ends within NNX_CHECK_BUDGET seconds (default 480), first-time CuPy kernel
# compilation included: each step gets what is left of the budget at most. The summary table comes
# last, and in $OUT/summary.txt, even when a step fails or times out. At most 8 files in $OUT.
# Exit 0 only when every step ran and passed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
budget=${NNX_CHECK_BUDGET:-480}
reserve=10 # seconds kept for the summary
out=${OUT:-/tmp/nnx-gpu-check}
mkdir -p "$out"
steps=${*:-tests mlp cnn profile}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 NNX_REQUIRE_GPU=1
export NNX_DATA_DIR=${NNX_DATA_DIR:-$PWD/.mnist}
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-/tmp/nnx-cupy-cache}
rows=()
failed=0

finish() {
  trap - EXIT INT TERM
  {
    echo
    echo "== nnx GPU check: summary (${SECONDS} s of a ${budget} s budget) =="
    cat "$out/env.txt" 2>/dev/null
    echo "| step | result | seconds |"
    echo "| --- | --- | --- |"
    printf '%s\n' "${rows[@]}"
    [ -s "$out/mlp.log" ] && sed -n '/^GPU:/,$p' "$out/mlp.log"
    [ -s "$out/cnn.log" ] && grep '^|' "$out/cnn.log"
    [ -s "$out/profile.log" ] && grep -E '^\||bound by' "$out/profile.log"
    if ((failed)); then
      echo "RESULT: FAILED: $failed step(s) failed, timed out, did not run, or skipped GPU tests"
    else
      echo "RESULT: ok"
    fi
  } | tee "$out/summary.txt"
  exit $((failed ? 1 : 0))
}
trap finish EXIT
trap 'rows+=("| (the script) | stopped by a signal | $SECONDS |"); failed=$((failed + 1)); exit 1' INT TERM

# step NAME CAP LOG COMMAND...: COMMAND with a timeout of min(CAP, what is left), output to LOG.
step() {
  local name=$1 cap=$2 log=$3
  shift 3
  local left=$((budget - reserve - SECONDS))
  local limit=$((cap < left ? cap : left))
  if ((limit < 5)); then
    rows+=("| $name | NOT RUN: out of time | 0 |")
    failed=$((failed + 1))
    return 1
  fi
  local t0=$SECONDS rc result
  timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  if ((rc == 124 || rc == 137)); then
    result="TIMED OUT after $limit s"
  elif ((rc != 0)); then
    result="FAILED (exit $rc)"
  else
    result="ok"
  fi
  if [ "$name" = "pytest -m gpu" ]; then # pytest's closing line: passed, failed, skipped
    result="$result: $(grep -E '(passed|failed|errors?|skipped|no tests ran).* in [0-9.]+s' "$log" | tail -n 1 | tr -d '=')"
  fi
  ((rc == 0)) || failed=$((failed + 1))
  rows+=("| $name | $result | $((SECONDS - t0)) |")
  return "$rc"
}

# What the device image lacks comes from the carried wheels (scripts/gpu_wheels.txt).
# Into fresh folders, used only when the install worked (never a stale copy from another run).
# MPICH's library and mpiexec are data files of its wheel, which pip's --target drops: a prefix.
site="$(mktemp -d)/site" mpi="$(mktemp -d)/mpi"
if step "install carried wheels" 90 "$out/env.txt" bash -c 'set -e
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$1" \
    $(ls .whl/*.whl | grep -v /mpich-)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --prefix "$2" .whl/mpich-*.whl' \
  _ "$site" "$mpi"; then
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$mpi/bin:$PATH" MPI4PY_LIBMPI="$mpi/lib/libmpi.so.12"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" # nnx straight from the working tree

python3 - >>"$out/env.txt" 2>&1 <<'EOF'
import platform, subprocess
def version(name):
    try:
        return __import__(name).__version__
    except Exception as exc:
        return f"missing ({type(exc).__name__})"
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30).stdout.strip() or "nvidia-smi: no GPU listed"
except Exception as exc:
    smi = f"nvidia-smi: {exc}"
try:
    import cupy
    cuda = f"CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, driver API {cupy.cuda.runtime.driverGetVersion()}"
except Exception as exc:
    cuda = f"CUDA: {type(exc).__name__}: {exc}"
print(f"GPU: {smi}; {cuda}")
print(f"Python {platform.python_version()}; CuPy {version('cupy')}; NumPy {version('numpy')}; "
      f"PyTorch {version('torch')}; pydantic {version('pydantic')}")
EOF
cat "$out/env.txt"

gpu_ok=1
step "GPU backend" 90 "$out/env.txt" python3 -c "
from nnx.backend import get_backend
import nnx.cli.app, nnx.config
b = get_backend('gpu'); x = b.xp.arange(10.0); b.synchronize(); print('backend', b.description(), float(x.sum()))
" || gpu_ok=0
[ -n "$(ls "$NNX_DATA_DIR"/*-ubyte* 2>/dev/null)" ] || rows+=("| MNIST | MISSING in $NNX_DATA_DIR (carry .mnist) | 0 |")

for name in $steps; do
  case $name in
    tests)
      step "pytest -m gpu" 230 "$out/pytest.log" python3 -m pytest -o addopts=-rfEs -m "gpu or multigpu" -q -p no:cacheprovider tests
      ;;
    mlp | cnn)
      if ((!gpu_ok)); then
        rows+=("| benchmark $name | NOT RUN: no usable GPU | 0 |")
        failed=$((failed + 1))
      elif [ "$name" = mlp ]; then
        step "benchmark mlp" 120 "$out/mlp.log" python3 benchmarks/gpu_mlp.py --json "$out/mlp.json"
      else
        step "benchmark cnn" 130 "$out/cnn.log" python3 benchmarks/cnn.py gpu --json "$out/cnn.json"
      fi
      ;;
    profile)
      if ((!gpu_ok)); then
        rows+=("| profile | NOT RUN: no usable GPU | 0 |")
        failed=$((failed + 1))
      elif ((budget - reserve - SECONDS < 30)); then # a diagnosis, not a result: no failure
        rows+=("| profile | not run, under 30 s left: run \`bash scripts/gpu_check.sh profile\` | 0 |")
      else
        step "profile" 60 "$out/profile.log" python3 benchmarks/profile_layers.py --device gpu --batches 20 \
          --config mnist_cnn mnist_mlp
      fi
      ;;
    *)
      rows+=("| $name | unknown step (use tests, mlp, cnn, profile) | 0 |")
      failed=$((failed + 1))
      ;;
  esac
done
