#!/usr/bin/env bash
# Builds the safetensors header and config.json fuzzers with clang + libFuzzer/ASan/UBSan and runs them for a
# bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
out=build/fuzz
mkdir -p "$out"

# fuzz NAME SECONDS MAX_LEN SOURCES...: builds build/fuzz/NAME from the sources, seeds it from
# tests/fuzz/NAME_corpus and runs it for SECONDS.
fuzz() {
  local name="$1" secs="$2" max_len="$3"
  shift 3
  mkdir -p "$out/${name}_corpus"
  cp "tests/fuzz/${name}_corpus/"* "$out/${name}_corpus/"
  clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I. "$@" \
    $(pkg-config --cflags absl_status absl_statusor absl_strings) \
    $(pkg-config --libs absl_status absl_statusor absl_strings) \
    -o "$out/$name"
  echo "fuzzing $name for ${secs}s"
  "$out/$name" -max_total_time="$secs" -max_len="$max_len" -print_final_stats=1 "$out/${name}_corpus" 2>&1 | tail -4
}

fuzz safetensors_fuzz "$seconds" 4096 tests/fuzz/safetensors_fuzz.cc shard/checkpoint/safetensors.cc shard/model/dtype.cc
# config.json, quantization_config included (the JSON library's own parser sits under it).
fuzz model_config_fuzz $(( seconds / 2 > 0 ? seconds / 2 : 1 )) 8192 tests/fuzz/model_config_fuzz.cc \
  shard/model/model_config.cc shard/model/published_shapes.cc
