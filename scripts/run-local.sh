#!/usr/bin/env bash
# Installs what is missing, builds, starts the local cluster (gemma serve: a worker and a router on the
# embedded default model) and answers one request through its public gRPC API with gemma client.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
source scripts/local-cluster.sh
start_local_cluster ./build/tools/gemma --kv-cache-mb 64
cat "$serve_log"
./build/tools/gemma client stream --server "$address" --prompt "${1:-The quick brown fox}" --max-new-tokens 24
