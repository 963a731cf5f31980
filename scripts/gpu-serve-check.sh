#!/usr/bin/env bash
# Part of gpu-check.sh: a worker on the GPU (f32) behind a router answers `gemma client` with the reference greedy
# tokens of tiny-mqa. Uses the binaries in build-gpu/bin; $1 is where logs go. GEMMA_CHECK_DEVICE=cpu runs the
# same check without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1
bin=build-gpu/bin
model=tests/data/gemma-tiny/tiny-mqa
rm -f "$out/worker.port" "$out/router.port"
"$bin/gemma-worker" --model "$model" --device "${GEMMA_CHECK_DEVICE:-cuda}" --precision f32 --kv_cache_mb 64 --port_file "$out/worker.port" \
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
