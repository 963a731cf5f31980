#!/usr/bin/env bash
# Prefix-cache figures in one run on one machine: the same load (requests sharing one long prefix, each with its own
# short suffix) served with the prefix cache off, then on; prints both JSON objects and the ratio of median TTFTs.
# usage: scripts/bench-prefix-cache.sh MODEL_DIR OUT_PREFIX [SHARED_PREFIX_TOKENS] [SUFFIX_TOKENS] [REQUESTS]
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1
out=$2
prefix=${3:-2000}
suffix=${4:-32}
requests=${5:-5}
threads=$(nproc)
gemma=./build/tools/gemma
source scripts/local-cluster.sh

for mode in off on; do
  echo "== prefix cache $mode: $model, a $prefix-token shared prefix + $suffix tokens, $requests requests" >&2
  start_local_cluster "$gemma" ${model:+--model "$model"} --threads "$threads" --kv-cache-mb 1024 --prefix-cache "$mode"
  "$gemma" bench --server "$address" --concurrency 1 --requests "$requests" --shared-prefix-tokens "$prefix" \
    --prompt-tokens "$suffix" --max-new-tokens 8 --json >"$out-$mode.json"
  kill -INT $serve; wait $serve 2>/dev/null || true
  trap - EXIT
done
python3 - "$out-off.json" "$out-on.json" <<'PY'
import json, sys
off, on = (json.load(open(p))["levels"][0]["ttft_s"]["p50"] for p in sys.argv[1:3])
print(f"median TTFT: {off * 1000:.1f} ms with the prefix cache off, {on * 1000:.1f} ms on: {off / on:.1f}x lower")
PY
