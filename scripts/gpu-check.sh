#!/usr/bin/env bash
# On a GPU machine (after scripts/build-gpu-tests.sh here, with build-gpu/ carried along): runs the GPU tests, the
# CUDA benchmark on a random Gemma 7B-shape checkpoint (made first), and Hugging Face transformers generating from
# the same checkpoint as the baseline; prints one summary. Everything lands in $OUT (default /tmp/gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
libs="$PWD/build-gpu/lib:/usr/local/cuda/lib64"
for mod in nccl cuda_runtime cublas; do
  d=$(python3 -c "import nvidia.$mod as m, os; print(os.path.join(list(m.__path__)[0], 'lib'))" 2>/dev/null) && libs="$d:$libs"
done
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
export GEMMA_TESTDATA="$PWD/tests/data"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
failed=0
for t in build-gpu/*_test; do
  name=$(basename "$t")
  if timeout 300 "$t" --gtest_output="xml:$out/$name.xml" > "$out/$name.log" 2>&1; then
    echo "PASS $name: $(grep -E '^\[  PASSED  \]' "$out/$name.log")"
  else
    echo "FAIL $name"; grep -E "Failure|FAILED|Expected|Which is|actual" "$out/$name.log" | head -30; failed=1
  fi
  grep -c "SKIPPED \]" "$out/$name.log" | xargs echo "  skipped:"
done

echo "== serving on the GPU: gemma-worker --device cuda, gemma-router, gemma client (tiny-mqa, f32)"
if timeout 120 bash scripts/gpu-serve-check.sh "$out" > "$out/serve.log" 2>&1; then
  echo "PASS serve: $(tail -1 "$out/serve.log")"
else
  echo "FAIL serve"; tail -15 "$out/serve.log"; failed=1
fi

model=${GEMMA_BENCH_MODEL:-/tmp/gemma-7b-random}
echo "== gemma-cuda-bench on $model (written first if absent)"
if timeout 420 build-gpu/gemma-cuda-bench --model "$model" --make-7b --json "$out/bench-cuda-7b.json" \
     > "$out/bench.log" 2>&1; then
  python3 - "$out/bench-cuda-7b.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
print(f"GPU {b['gpu']}: device bandwidth {b['device_bandwidth_bytes_per_s']/1e12:.2f} TB/s, cuBLASLt bf16 GEMM {b['gemm_bf16_tflops']:.0f} TFLOP/s")
for d in b["decode"]:
    print(f"  decode batch {d['batch']:>3}: {d['tokens_per_s']:.1f} tok/s ({d['step_ms']:.2f} ms/step, context {b['decode_context']})")
print(f"  batch-1 decode at {100*b['decode_batch1_bandwidth_fraction']:.0f}% of device bandwidth (target >= 75%); "
      f"{b['decode_batch1_tokens_per_s_cublaslt_only']:.1f} tok/s with cuBLASLt for the decode GEMMs instead")
print(f"  prefill {b['prefill_tokens']} tokens: {b['prefill_tokens_per_s']:.0f} tok/s, {b['prefill_tflops']:.0f} TFLOP/s = "
      f"{100*b['prefill_fraction_of_gemm']:.0f}% of the GEMM (target >= 50%)")
PY
else
  echo "FAIL gemma-cuda-bench"; tail -20 "$out/bench.log"; failed=1
fi
echo "== Hugging Face transformers, same checkpoint, batch 1"
timeout 300 python3 scripts/hf_baseline.py "$model" > "$out/hf-baseline.json" 2> "$out/hf-baseline.log" \
  && cat "$out/hf-baseline.json" || { echo "FAIL hf baseline"; tail -5 "$out/hf-baseline.log"; failed=1; }
exit $failed
