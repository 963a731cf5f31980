#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (ctest + a bounded fuzz run), then clang's
# thread-safety analysis as errors over the code that holds locks (its own build, build-tsa/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
(cd build && ctest --output-on-failure -j "$(nproc)" --timeout 900)
bash scripts/fuzz.sh "${GEMMA_FUZZ_SECONDS:-60}"
bash scripts/check-thread-safety.sh
