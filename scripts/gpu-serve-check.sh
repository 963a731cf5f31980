#!/usr/bin/env bash
# Part of gpu-check.sh: a worker on the GPU (f32, its KV cache planned from --gpu_memory_fraction) behind a router
# answers `gemma client` with the reference greedy tokens of tiny-mqa; a worker given too small a share of the GPU
# says what it needs and exits with an error. Uses the binaries in build-gpu/bin; $1 is where logs go.
# GEMMA_CHECK_DEVICE=cpu runs the serving check without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1
bin=build-gpu/bin
model=tests/data/gemma-tiny/tiny-mqa
rm -f "$out/worker.port" "$out/router.port"
if [[ "${GEMMA_CHECK_DEVICE:-cuda}" == cuda ]]; then
  if timeout 60 "$bin/gemma-worker" --model "$model" --device cuda --gpu_memory_fraction 0.0001 \
       --port_file "$out/small.port" 2> "$out/worker-small.err"; then
    echo "a worker with --gpu_memory_fraction 0.0001 started"; exit 1
  fi
  grep -q "one sequence of the longest context needs" "$out/worker-small.err" ||
    { echo "a worker with too little memory did not say what it needs:"; tail -5 "$out/worker-small.err"; exit 1; }
  echo "too little GPU memory: $(grep -o 'the KV cache gets.*' "$out/worker-small.err" | head -1 | cut -c1-200)"
fi
"$bin/gemma-worker" --model "$model" --device "${GEMMA_CHECK_DEVICE:-cuda}" --precision f32 --port_file "$out/worker.port" \
  2> "$out/worker.err" &
worker=$!
trap 'kill $worker ${router:-} 2>/dev/null || true' EXIT
for _ in $(seq 600); do [[ -s "$out/worker.port" ]] && break; kill -0 $worker || { cat "$out/worker.err"; exit 1; }; sleep 0.1; done
"$bin/gemma-router" --plaintext --workers "127.0.0.1:$(cat "$out/worker.port")" --port_file "$out/router.port" \
  2> "$out/router.err" &
router=$!
for _ in $(seq 300); do [[ -s "$out/router.port" ]] && break; sleep 0.1; done
"$bin/gemma" client generate --server "127.0.0.1:$(cat "$out/router.port")" --prompt-ids 2,3791,323 \
  --max-new-tokens 32 --json > "$out/serve.json"
python3 - "$out/serve.json" tests/data/gemma-tiny/reference/tiny-mqa/generations.json <<'PY'
import json, sys
got = json.load(open(sys.argv[1]))["token_ids"]
ref = json.load(open(sys.argv[2]))["results"][0]
n = ref["first_step_with_margin_below_1e-3"] or len(ref["generated_ids"])
assert got[:n] == ref["generated_ids"][:n], (got, ref["generated_ids"])
print(f"the GPU worker's greedy tokens match the reference for {n} steps")
PY
# The serving processes go first: the gemma command plans its own KV cache from what the GPU has free.
kill $worker $router 2>/dev/null || true
wait $worker $router 2>/dev/null || true
# The gemma command's own engine on the GPU (the CUDA module loaded in process), on a Gemma 1 and, where the
# shared test data is there, a Gemma 2 reference: the same greedy tokens.
check_generate() {  # MODEL_DIR REFERENCE_DIR
  "$bin/gemma" generate --model "$1" --device cuda --precision f32 --json --max-new-tokens 32 \
    --prompt-ids "$(python3 -c 'import json, sys; print(",".join(map(str, json.load(open(sys.argv[1]))["results"][0]["prompt_ids"])))' "$2/generations.json")" \
    > "$out/generate.json"
  python3 - "$out/generate.json" "$2/generations.json" <<'PY'
import json, sys
got = json.load(open(sys.argv[1]))["token_ids"]
ref = json.load(open(sys.argv[2]))["results"][0]
n = ref["first_step_with_margin_below_1e-3"] or len(ref["generated_ids"])
assert got[:n] == ref["generated_ids"][:n], (got, ref["generated_ids"])
print(f"gemma generate --device cuda matches {sys.argv[2].split('/')[-2]}'s reference for {n} steps")
PY
}
if [[ "${GEMMA_CHECK_DEVICE:-cuda}" == cuda ]]; then
  check_generate "$model" tests/data/gemma-tiny/reference/tiny-mqa
  g2=${GEMMA_TESTDATA:-tests/data}/gemma2-tiny
  if [[ -d $g2/tiny-g2 && -d $g2/reference ]]; then check_generate "$g2/tiny-g2" "$g2/reference/tiny-g2"; fi
  # Weights quantized at load on the GPU give the CPU's quantized greedy tokens (f32 compute on both).
  for w in int8 int4 fp8; do
    for d in cuda cpu; do
      "$bin/gemma" generate --model "$model" --device $d $([[ $d == cuda ]] && echo --precision f32) --weights $w \
        --json --max-new-tokens 16 --prompt-ids 2,3791,323 > "$out/generate-$w-$d.json"
    done
    python3 - "$out/generate-$w-cuda.json" "$out/generate-$w-cpu.json" "$w" <<'PY'
import json, sys
gpu, cpu = (json.load(open(p))["token_ids"] for p in sys.argv[1:3])
assert len(gpu) == 16 and gpu[:8] == cpu[:8], (gpu, cpu)
print(f"gemma generate --device cuda --weights {sys.argv[3]}: {sum(a == b for a, b in zip(gpu, cpu))}/16 greedy tokens as the CPU's")
PY
  done
fi
