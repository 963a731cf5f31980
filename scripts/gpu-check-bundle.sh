#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a GPU machine that has CUDA and PyTorch but no Debian -dev packages into
# gpu-bundle/ (ignored by git), to copy there beside the checkout: build-gpu/ (built here first by
# scripts/build-gpu-tests.sh) and the shared reference models the GPU tests read (gemma2-tiny, gemma3-tiny,
# gemma-lora-tiny, gemma-activations-tiny; gemma-tiny is in tests/data), xz-compressed, in two parts
# (testdata-gemma23: the Gemma 2 and 3 models; testdata-adapters: the LoRA and activation references), so that a
# copy limited in size can take one part at a time. The reference logits' JSON copies are cut to the prompt ids the
# GPU tests read from them (the values come from the .f32.bin files). gpu-check.sh unpacks whatever parts it finds
# when build-gpu/ or the shared data is absent; the cases of a part left behind fail saying their data is absent.
#
# usage: scripts/gpu-check-bundle.sh [--no-build]   (then prints the bundle's size beside the checkout's)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${GEMMA_TESTDATA:-../shared/testdata}
[[ ${1:-} == --no-build ]] || bash scripts/build-gpu-tests.sh
[[ -x build-gpu/cuda_backend_test ]] || { echo "build-gpu/ is missing: run scripts/build-gpu-tests.sh" >&2; exit 1; }
rm -rf gpu-bundle && mkdir -p gpu-bundle
tar cf - build-gpu | xz -6 -T0 > gpu-bundle/build-gpu.tar.xz
staged=$(mktemp -d)
trap 'rm -rf "$staged"' EXIT
for d in gemma2-tiny gemma3-tiny gemma-lora-tiny gemma-activations-tiny; do
  if [[ -d $shared/$d ]]; then cp -r "$shared/$d" "$staged/"; else echo "note: $shared/$d is absent; its GPU cases will say so" >&2; fi
done
chmod -R u+w "$staged"
python3 - "$staged" <<'PY'
import json, pathlib, sys
for p in pathlib.Path(sys.argv[1]).glob("*/reference/**/logits_*.json"):
    ids = json.loads(p.read_text())["ids"]
    p.write_text(json.dumps({"ids": ids}))
PY
pack() {  # NAME FOLDER...
  local name=$1; shift
  local present=()
  for d in "$@"; do [[ -d $staged/$d ]] && present+=("$d"); done
  [[ ${#present[@]} -gt 0 ]] && tar cf - -C "$staged" "${present[@]}" | xz -6 -T0 > "gpu-bundle/$name.tar.xz"
  return 0
}
pack testdata-gemma23 gemma2-tiny gemma3-tiny
pack testdata-adapters gemma-lora-tiny gemma-activations-tiny
bundle=$(du -cb gpu-bundle/* | tail -1 | cut -f1)
checkout=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
echo "gpu-bundle/: $((bundle >> 20)) MiB ($(ls gpu-bundle | tr '\n' ' ')); the checkout's files: $((checkout >> 20)) MiB; together $(((bundle + checkout) >> 20)) MiB"
