#!/usr/bin/env bash
# Builds the safetensors header fuzzer with clang + libFuzzer/ASan/UBSan and runs it for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
out=build/fuzz
mkdir -p "$out" "$out/corpus"
cp tests/fuzz/corpus/* "$out/corpus/"
clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I. \
  tests/fuzz/safetensors_fuzz.cc shard/checkpoint/safetensors.cc shard/model/dtype.cc \
  $(pkg-config --cflags absl_status absl_statusor absl_strings) \
  $(pkg-config --libs absl_status absl_statusor absl_strings) \
  -o "$out/safetensors_fuzz"
echo "fuzzing the safetensors header parser for ${seconds}s"
"$out/safetensors_fuzz" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 "$out/corpus" 2>&1 | tail -4
