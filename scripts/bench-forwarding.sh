#!/usr/bin/env bash
# What a router forwarding to a peer costs, in one run on one machine: one worker group, router A schedules it,
# router B holds no group and forwards every request to A. The same load goes through A directly, then through B;
# prints both JSON objects and the ratio of median TTFT and inter-token latency.
# usage: scripts/bench-forwarding.sh MODEL_DIR OUT_PREFIX [CONCURRENCY] [REQUESTS]
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1
out=$2
concurrency=${3:-1,8}
requests=${4:-64}
build=./build
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
worker_port=$(free_port); a_peer=$(free_port); b_peer=$(free_port)
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
"$build/worker/gemma-worker" --model "$model" --port "$worker_port" --threads 1 --kv_cache_mb 256 >/dev/null 2>&1 &
pids+=($!)
# Starts a router and waits until it has met the group (it writes its port file then).
router() {  # NAME PEER_PORT
  "$build/router/gemma-router" --plaintext --workers "127.0.0.1:$worker_port" --port_file "$tmp/$1" \
    --peer_port "$2" --advertise_address "127.0.0.1:$2" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 600); do [[ -s $tmp/$1 ]] && break; sleep 0.1; done
  [[ -s $tmp/$1 ]] || { echo "router $1 did not start" >&2; exit 1; }
}
router a "$a_peer"
router b "$b_peer"  # started second: the group's lease is A's
a_port=$(cat "$tmp/a") b_port=$(cat "$tmp/b")
for via in direct:$a_port forwarded:$b_port; do
  echo "== ${via%%:*}: concurrency $concurrency, $requests requests" >&2
  "$build/tools/gemma" bench --server "127.0.0.1:${via#*:}" --concurrency "$concurrency" --requests "$requests" \
    --prompt-tokens 32 --max-new-tokens 32 --json >"$out-${via%%:*}.json"
done
python3 - "$out-direct.json" "$out-forwarded.json" <<'PY'
import json, sys
direct, forwarded = (json.load(open(p))["levels"] for p in sys.argv[1:3])
for d, f in zip(direct, forwarded):
    print(f"concurrency {d['concurrency']}: TTFT p50 {d['ttft_s']['p50'] * 1000:.2f} ms direct, "
          f"{f['ttft_s']['p50'] * 1000:.2f} ms forwarded ({f['ttft_s']['p50'] / d['ttft_s']['p50']:.2f}x); "
          f"ITL p50 {d['inter_token_s']['p50'] * 1000:.3f} ms direct, {f['inter_token_s']['p50'] * 1000:.3f} ms forwarded")
PY
