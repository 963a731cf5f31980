#!/usr/bin/env bash
# The OpenAI HTTP API against gRPC on one cluster in one run: gemma bench --server streams the same requests
# through each protocol at each concurrency level, and over gRPC with every output constrained to a JSON object
# (structured output's cost per step); gRPC runs first and last, and the others are compared with the mean of the
# two, so drift of a shared machine shows.
# usage: scripts/bench-http.sh OUT_PREFIX [MODEL_DIR] [CONCURRENCY] [MAX_NEW_TOKENS] [REQUESTS]
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1
model=${2:-}
levels=${3:-1,64}
new_tokens=${4:-64}
requests=${5:-}
gemma=./build/tools/gemma
source scripts/local-cluster.sh
start_local_cluster "$gemma" ${model:+--model "$model"} --threads "$(nproc)" --kv-cache-mb 1024 --http-port 0
http=$(grep -o "HTTP API at http://[0-9.:]*" "$serve_log" | sed 's|.*http://||')
[[ -n $http ]] || { echo "no HTTP address in the gemma serve output" >&2; cat "$serve_log"; exit 1; }
bench() {
  "$gemma" bench --server "$address" --concurrency "$levels" --prompt-tokens 16 --max-new-tokens "$new_tokens" \
    ${requests:+--requests "$requests"} --json "$@"
}
echo "== gRPC" >&2
bench >"$out-grpc.json"
echo "== HTTP (OpenAI API)" >&2
bench --protocol http --http-server "$http" >"$out-http.json"
echo "== gRPC, outputs constrained to a JSON object" >&2
bench --response-format json_object >"$out-json-object.json"
echo "== gRPC again" >&2
bench >"$out-grpc-after.json"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
runs = {name: {l["concurrency"]: l for l in json.load(open(f"{out}-{name}.json"))["levels"]}
        for name in ("grpc", "http", "grpc-after", "json-object")}
for c, h in runs["http"].items():
    g = [runs["grpc"][c], runs["grpc-after"][c]]
    itl = sum(x["inter_token_s"]["mean"] for x in g) / 2
    tps = sum(x["tokens_per_s"] for x in g) / 2
    print(f"concurrency {c}: inter-token mean gRPC {1000 * itl:.2f} ms (runs {1000 * g[0]['inter_token_s']['mean']:.2f}, "
          f"{1000 * g[1]['inter_token_s']['mean']:.2f}), HTTP {1000 * h['inter_token_s']['mean']:.2f} ms: "
          f"per-token overhead {100 * (h['inter_token_s']['mean'] / itl - 1):+.1f}%; tokens/s gRPC {tps:.1f}, "
          f"HTTP {h['tokens_per_s']:.1f} ({100 * (h['tokens_per_s'] / tps - 1):+.1f}%)")
    if c in runs["json-object"]:
        j = runs["json-object"][c]
        print(f"concurrency {c}: json_object inter-token mean {1000 * j['inter_token_s']['mean']:.2f} ms "
              f"({100 * (j['inter_token_s']['mean'] / itl - 1):+.1f}% against unconstrained gRPC)")
PY
