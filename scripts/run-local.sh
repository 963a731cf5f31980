#!/usr/bin/env bash
# Installs what is missing, builds, starts the local cluster (gemma serve: a worker and a router on the
# embedded default model) and answers one request through its public gRPC API with gemma client.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
log=$(mktemp)
./build/tools/gemma serve --kv-cache-mb 64 >"$log" &
serve=$!
trap 'kill -INT $serve 2>/dev/null; wait $serve 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 600); do
  grep -q "listening on" "$log" && break
  kill -0 $serve 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
cat "$log"
address=$(grep -o "listening on [0-9.:]*" "$log" | cut -d' ' -f3)
./build/tools/gemma client stream --server "$address" --prompt "${1:-The quick brown fox}" --max-new-tokens 24
