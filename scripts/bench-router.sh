#!/usr/bin/env bash
# Router figures in one run on one machine: the engine alone (gemma bench) against the same model served through
# gemma serve and loaded by gemma bench --server (concurrency sweep). Prints both JSON objects and the router's
# overhead at batch 1.
# The engine runs before and after the router sweep; the overhead is taken against their mean, so that drift of
# a shared machine during the run shows (compare the two engine figures).
# usage: scripts/bench-router.sh MODEL_DIR OUT_PREFIX [CONCURRENCY] [MAX_NEW_TOKENS] [PROMPT_TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1
out=$2
levels=${3:-1,4,16}
new_tokens=${4:-64}
prompt_tokens=${5:-16}
threads=$(nproc)
gemma=./build/tools/gemma

engine() {
  echo "== engine alone: $model, $threads threads" >&2
  "$gemma" bench --model "$model" --threads "$threads" --prompt-len 64 --steps 16 --json >"$1"
}
engine "$out-engine.json"

echo "== through the router: gemma serve + gemma bench --server" >&2
source scripts/local-cluster.sh
start_local_cluster "$gemma" --model "$model" --threads "$threads" --kv-cache-mb 512
"$gemma" bench --server "$address" --concurrency "$levels" --prompt-tokens "$prompt_tokens" --max-new-tokens "$new_tokens" \
  --json >"$out-router.json"
kill -INT $serve; wait $serve 2>/dev/null || true
engine "$out-engine-after.json"

python3 - "$out-engine.json" "$out-engine-after.json" "$out-router.json" <<'PY'
import json, sys
before, after = (json.load(open(p))["decode_tokens_per_s_batch1"] for p in sys.argv[1:3])
router = json.load(open(sys.argv[3]))
e1 = (before + after) / 2
print(f"engine alone, batch-1 decode: {before:.2f} tok/s before, {after:.2f} after the router sweep")
for level in router["levels"]:
    itl = level["inter_token_s"]["mean"]
    print(f"router, concurrency {level['concurrency']:>3}: {level['tokens_per_s']:.2f} tok/s aggregate "
          f"({level['ok']}/{level['requests']} ok), per-request decode {1/itl if itl else 0:.2f} tok/s, "
          f"TTFT p50 {1000*level['ttft_s']['p50']:.0f} ms, ITL p50 {1000*level['inter_token_s']['p50']:.1f} ms")
    if level["concurrency"] == 1 and itl:
        print(f"router overhead at batch 1 (decode, mean inter-token time vs engine mean): {100 * (1 - (1 / itl) / e1):.1f}%")
PY
