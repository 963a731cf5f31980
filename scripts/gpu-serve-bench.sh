#!/usr/bin/env bash
# Part of gpu-check.sh: the whole serving stack on the GPU under load. `gemma serve --device cuda` (one worker, the
# router) on MODEL, loaded by `gemma bench --server` at several concurrencies; prints its JSON. The engine alone is
# gemma-cuda-bench's figure from the same checkpoint. GEMMA_CHECK_DEVICE=cpu runs it without a GPU;
# GEMMA_OVERLAP_STEPS=on|off sets the router's overlapped steps (default: the router's own, on).
# usage: scripts/gpu-serve-bench.sh MODEL_DIR [CONCURRENCY] [PROMPT_TOKENS] [MAX_NEW_TOKENS] [KV_CACHE_MB]
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1
levels=${2:-1,16,64}
prompt_tokens=${3:-128}
new_tokens=${4:-128}
kv_mb=${5:-${GEMMA_SERVE_KV_MB:-20000}}
gemma=build-gpu/bin/gemma
# A benchmark checkpoint carries no tokenizer; the router needs one, and random prompt ids need no real vocabulary.
[[ -s "$model/tokenizer.model" ]] || cp tests/data/gemma-tiny/tokenizer.model "$model/tokenizer.model"
source scripts/local-cluster.sh
start_local_cluster "$gemma" --model "$model" --device "${GEMMA_CHECK_DEVICE:-cuda}" --kv-cache-mb "$kv_mb" \
  ${GEMMA_OVERLAP_STEPS:+--overlap-steps "$GEMMA_OVERLAP_STEPS"}
"$gemma" bench --server "$address" --concurrency "$levels" --prompt-tokens "$prompt_tokens" \
  --max-new-tokens "$new_tokens" --json
