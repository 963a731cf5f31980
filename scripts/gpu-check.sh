#!/usr/bin/env bash
# On a GPU machine: runs the GPU tests built by scripts/build-gpu-tests.sh and prints one summary.
# NCCL and the CUDA runtime come from the machine (CUDA toolkit, or the nvidia-* Python wheels).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
libs=/usr/local/cuda/lib64
for mod in nccl cuda_runtime; do
  d=$(python3 -c "import nvidia.$mod as m, os; print(os.path.join(list(m.__path__)[0], 'lib'))" 2>/dev/null) && libs="$d:$libs"
done
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
failed=0
for t in build-gpu/*_test; do
  name=$(basename "$t")
  if "$t" --gtest_output="xml:$out/$name.xml" > "$out/$name.log" 2>&1; then
    echo "PASS $name: $(grep -E '^\[  PASSED  \]' "$out/$name.log")"
  else
    echo "FAIL $name"; tail -20 "$out/$name.log"; failed=1
  fi
  grep -E "SKIPPED|Skipped" "$out/$name.log" | head -3
done
exit $failed
