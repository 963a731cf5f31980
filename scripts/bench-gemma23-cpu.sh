#!/usr/bin/env bash
# Gemma 2 and Gemma 3 on the CPU: batch-1 decode from random checkpoints of published shapes (Gemma 3 1B, Gemma 2
# 2B) against the memory bandwidth measured in the same run, and Gemma 3 1B decoding after a 64- and a 4,096-token
# context (its local layers attend over their 512-position window only, so only its global layers read more).
# usage: scripts/bench-gemma23-cpu.sh [OUT_DIR (default docs)]; checkpoints are written to $GEMMA_BENCH_DIR
# (default /tmp/gemma23-bench) unless already there. Needs build/ (scripts/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs}
work=${GEMMA_BENCH_DIR:-/tmp/gemma23-bench}
gemma=build/tools/gemma
mkdir -p "$work" "$out"
for shape in gemma3-1b gemma2-2b; do
  [[ -s "$work/$shape/config.json" ]] || "$gemma" make-tiny --shape "$shape" --out "$work/$shape"
done
"$gemma" bench --model "$work/gemma3-1b" --prompt-len 64 --json > "$out/bench-cpu-gemma3-1b.json"
"$gemma" bench --model "$work/gemma3-1b" --prompt-len 64 --decode-context 4096 --steps 4 --json \
  > "$out/bench-cpu-gemma3-1b-context4096.json"
"$gemma" bench --model "$work/gemma2-2b" --prompt-len 64 --json > "$out/bench-cpu-gemma2-2b.json"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
for name in ("gemma3-1b", "gemma3-1b-context4096", "gemma2-2b"):
    b = json.load(open(f"{out}/bench-cpu-{name}.json"))
    print(f"{name}: {b['weight_bytes']/1e9:.2f} GB of weights, batch-1 decode after {b['decode_context_batch1']} tokens "
          f"{b['decode_tokens_per_s_batch1']:.2f} tok/s = {100*b['decode_batch1_bandwidth_fraction']:.0f}% of "
          f"{b['read_bandwidth_bytes_per_s']/1e9:.1f} GB/s ({b['threads']} threads)")
PY
