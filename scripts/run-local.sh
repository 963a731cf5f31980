#!/usr/bin/env bash
# Installs what is missing, builds, and generates text with the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
./build/tools/gemma generate --prompt "${1:-The quick brown fox}" --max-new-tokens 24
