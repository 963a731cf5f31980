#!/usr/bin/env bash
# Builds the safetensors header and config.json fuzzers with clang + libFuzzer/ASan/UBSan and runs them for a
# bounded time.
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

# config.json, quantization_config included (the JSON library's own parser sits under it).
mkdir -p "$out/config_corpus"
cp tests/fuzz/config_corpus/* "$out/config_corpus/"
clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I. \
  tests/fuzz/model_config_fuzz.cc shard/model/model_config.cc shard/model/published_shapes.cc \
  $(pkg-config --cflags absl_status absl_statusor absl_strings) \
  $(pkg-config --libs absl_status absl_statusor absl_strings) \
  -o "$out/model_config_fuzz"
config_seconds=$(( seconds / 2 > 0 ? seconds / 2 : 1 ))
echo "fuzzing the config.json parser for ${config_seconds}s"
"$out/model_config_fuzz" -max_total_time="$config_seconds" -max_len=8192 -print_final_stats=1 "$out/config_corpus" 2>&1 | tail -4
