#!/usr/bin/env bash
# Router figures in one run on one machine: the engine alone (gemma bench) against the same model served through
# gemma serve and loaded by gemma bench --server (concurrency sweep). Prints both JSON objects and the router's
# overhead at batch 1.
# The engine runs before and after the router sweep; the overhead is taken against their mean, so that drift of
# a shared machine during the run shows (compare the two engine figures).
# usage: scripts/bench-router.sh MODEL_DIR OUT_PREFIX [CONCURRENCY] [MAX_NEW_TOKENS] [PROMPT_TOKENS] [OVERLAP on|off]
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1
out=$2
levels=${3:-1,4,16}
new_tokens=${4:-64}
prompt_tokens=${5:-16}
overlap=${6:-on}
threads=$(nproc)
gemma=./build/tools/gemma

engine() {
  echo "== engine alone: $model, $threads threads" >&2
  "$gemma" bench --model "$model" --threads "$threads" --prompt-len 64 --steps 16 --json >"$1"
}
engine "$out-engine.json"

echo "== through the router: gemma serve + gemma bench --server" >&2
source scripts/local-cluster.sh
start_local_cluster "$gemma" ${model:+--model "$model"} --threads "$threads" --kv-cache-mb 512 --overlap-steps "$overlap"
"$gemma" bench --server "$address" --concurrency "$levels" --prompt-tokens "$prompt_tokens" --max-new-tokens "$new_tokens" \
  --json >"$out-router.json"
kill -INT $serve; wait $serve 2>/dev/null || true
engine "$out-engine-after.json"

engine_mean=$(python3 - "$out-engine.json" "$out-engine-after.json" <<'PY'
import json, sys
before, after = (json.load(open(p))["decode_tokens_per_s_batch1"] for p in sys.argv[1:3])
print(f"engine alone, batch-1 decode: {before:.2f} tok/s before, {after:.2f} after the router sweep", file=sys.stderr)
print((before + after) / 2)
PY
)
python3 scripts/router_bench_summary.py "$out-router.json" "$engine_mean"
