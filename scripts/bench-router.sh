#!/usr/bin/env bash
# Router figures in one run on one machine: the engine alone (gemma bench) against the same model served through
# gemma serve and loaded by gemma bench --server (concurrency sweep). Prints both JSON objects and the router's
# overhead at batch 1.
# usage: scripts/bench-router.sh MODEL_DIR OUT_PREFIX [CONCURRENCY] [MAX_NEW_TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1
out=$2
levels=${3:-1,4,16}
new_tokens=${4:-32}
threads=$(nproc)
gemma=./build/tools/gemma

echo "== engine alone: $model, $threads threads" >&2
"$gemma" bench --model "$model" --threads "$threads" --prompt-len 64 --steps 16 --json >"$out-engine.json"

echo "== through the router: gemma serve + gemma bench --server" >&2
log=$(mktemp)
"$gemma" serve --model "$model" --threads "$threads" --kv-cache-mb 512 >"$log" &
serve=$!
trap 'kill -INT $serve 2>/dev/null; wait $serve 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 3000); do
  grep -q "listening on" "$log" && break
  kill -0 $serve 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
address=$(grep -o "listening on [0-9.:]*" "$log" | cut -d' ' -f3)
"$gemma" bench --server "$address" --concurrency "$levels" --prompt-tokens 64 --max-new-tokens "$new_tokens" --json \
  >"$out-router.json"

python3 - "$out-engine.json" "$out-router.json" <<'PY'
import json, sys
engine = json.load(open(sys.argv[1]))
router = json.load(open(sys.argv[2]))
e1 = engine["decode_tokens_per_s_batch1"]
print(f"engine alone, batch-1 decode: {e1:.2f} tok/s")
for level in router["levels"]:
    itl = level["inter_token_s"]["mean"]
    print(f"router, concurrency {level['concurrency']:>3}: {level['tokens_per_s']:.2f} tok/s aggregate "
          f"({level['ok']}/{level['requests']} ok), per-request decode {1/itl if itl else 0:.2f} tok/s, "
          f"TTFT p50 {1000*level['ttft_s']['p50']:.0f} ms, ITL p50 {1000*level['inter_token_s']['p50']:.1f} ms")
    if level["concurrency"] == 1 and itl:
        print(f"router overhead at batch 1 (decode): {100 * (1 - (1 / itl) / e1):.1f}%")
PY
