#!/usr/bin/env bash
# The one GPU check: runs the GPU tests, serves end to end on the GPU, runs the CUDA benchmark on a random Gemma
# 7B-shape checkpoint (written first) and Hugging Face transformers generating from the same checkpoint as the
# baseline; prints one summary. Needs build-gpu/ (scripts/build-gpu-tests.sh, run where the -dev packages are;
# run here first if it is absent and they are present).
#
# Logs land in $GEMMA_GPU_CHECK_DIR (default /tmp/gpu-check). Where $OUT is set, the summary is written there as it
# goes (summary.txt) and the logs are packed there at the end (gpu-check-logs.tar.gz), so a run cut short still
# returns what it found. GEMMA_GPU_CHECK_PARTS picks parts (default tests,serve,bench,lora,weights,router,hf; weights: the 7B shape quantized
# at load to int8, int4 and fp8, decode at batch 1 and 16 against bf16; lora: decode of
# batch 32 over 8 rank-16 adapters on all seven projections against the base model, 7B shape; also gemma23: the
# Gemma 3 27B shape, bf16, decode at context 512 and at 32k with and without its sliding windows, prefill; and
# overlap: the router's share of a batch-1 token on the 7B shape with overlapped steps off and on);
# GEMMA_GPU_TEST_FILTER is passed to every test binary as --gtest_filter. Test data: tests/data (gemma-tiny), or
# $GEMMA_TESTDATA with gemma2-tiny and gemma3-tiny beside it, or gpu-bundle/ (scripts/gpu-check-bundle.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
work=${GEMMA_GPU_CHECK_DIR:-/tmp/gpu-check}
parts=",${GEMMA_GPU_CHECK_PARTS:-tests,serve,bench,lora,weights,router,hf},"
mkdir -p "$work"
if [[ -n "${OUT:-}" ]]; then
  exec > >(tee "$OUT/summary.txt") 2>&1
  trap 'tar czf "$OUT/gpu-check-logs.tar.gz" -C "$work" . 2>/dev/null' EXIT
fi
started=$SECONDS
section() { echo "== [$((SECONDS - started)) s] $*"; }
wants() { [[ $parts == *",$1,"* ]]; }

# A bundle from scripts/gpu-check-bundle.sh, where one was copied here: the binaries and the shared test data.
if [[ ! -x build-gpu/cuda_backend_test && -f gpu-bundle/build-gpu.tar.xz ]]; then tar xJf gpu-bundle/build-gpu.tar.xz; fi
if [[ -z "${GEMMA_TESTDATA:-}" && ! -d ../shared/testdata/gemma2-tiny ]] && compgen -G "gpu-bundle/testdata-*.tar.xz" >/dev/null; then
  mkdir -p "$work/testdata"
  for part in gpu-bundle/testdata-*.tar.xz; do tar xJf "$part" -C "$work/testdata"; done
  ln -sfn "$PWD/tests/data/gemma-tiny" "$work/testdata/gemma-tiny"
  export GEMMA_TESTDATA="$work/testdata"
fi
[[ -x build-gpu/cuda_backend_test ]] || bash scripts/build-gpu-tests.sh || { echo "FAIL: build-gpu/ is missing and cannot be built here"; exit 1; }

# CUDA, cuBLAS and NCCL: the toolkit's, else the ones PyTorch's wheels bring.
libs="$PWD/build-gpu/lib:/usr/local/cuda/lib64"
wheel_libs=$(python3 - <<'PY' 2>/dev/null
import os
try:
    import nvidia
except ImportError:
    raise SystemExit
wanted = ("libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13", "libnccl.so.2")
dirs = []
for root in nvidia.__path__:
    for d, _, files in os.walk(root):
        if any(f in wanted for f in files) and d not in dirs:
            dirs.append(d)
print(":".join(dirs))
PY
)
[[ -n "$wheel_libs" ]] && libs="$libs:$wheel_libs"
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
# The shared test data beside the checkout where it is there (every reference model), else the bundled gemma-tiny.
[[ -d ../shared/testdata/gemma2-tiny ]] && default_testdata="$(cd ../shared/testdata && pwd)" || default_testdata="$PWD/tests/data"
export GEMMA_TESTDATA="${GEMMA_TESTDATA:-$default_testdata}"
echo "test data: $GEMMA_TESTDATA ($(ls "$GEMMA_TESTDATA" | tr '\n' ' '))"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$work/gpu.txt"
failed=0

if wants tests; then
  for t in build-gpu/*_test; do
    name=$(basename "$t")
    section "$name"
    if timeout "${GEMMA_GPU_TEST_TIMEOUT:-240}" "$t" --gtest_output="xml:$work/$name.xml" \
         ${GEMMA_GPU_TEST_FILTER:+--gtest_filter="$GEMMA_GPU_TEST_FILTER"} > "$work/$name.log" 2>&1; then
      echo "PASS $name: $(grep -E '^\[  PASSED  \]' "$work/$name.log")"
    else
      echo "FAIL $name (exit $?)"; grep -E "^\[  FAILED  \]|Failure|Expected|Which is|actual|error" "$work/$name.log" | head -40
      tail -5 "$work/$name.log"; failed=1
    fi
    grep -E "SKIPPED \]" "$work/$name.log" | head -5
  done
fi

if wants serve; then
  section "serving on the GPU: gemma-worker --device cuda, gemma-router, gemma client (tiny-mqa, f32)"
  if timeout 180 bash scripts/gpu-serve-check.sh "$work" > "$work/serve.log" 2>&1; then
    echo "PASS serve: $(tail -1 "$work/serve.log")"
    grep "too little GPU memory" "$work/serve.log"
    grep -o "device memory.*" "$work/worker.err" | head -1
  else
    echo "FAIL serve"; tail -15 "$work/serve.log"; tail -15 "$work/worker.err" 2>/dev/null; failed=1
  fi
fi

model=${GEMMA_BENCH_MODEL:-/tmp/gemma-7b-random}
if wants bench; then
  section "gemma-cuda-bench on $model (written first if absent)"
  if timeout "${GEMMA_GPU_BENCH_TIMEOUT:-300}" build-gpu/gemma-cuda-bench --model "$model" --make_7b --json "$work/bench-cuda-7b.json" \
       > "$work/bench.log" 2>&1; then
    cp "$work/bench-cuda-7b.json" "${OUT:-$work}/" 2>/dev/null
    python3 - "$work/bench-cuda-7b.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
print(f"GPU {b['gpu']}: device bandwidth {b['device_bandwidth_bytes_per_s']/1e12:.2f} TB/s, cuBLASLt bf16 GEMM {b['gemm_bf16_tflops']:.0f} TFLOP/s")
stages = lambda d: ", ".join(f"{k} {v:.2f}" for k, v in d.items())
for d in b["decode"]:
    print(f"  decode batch {d['batch']:>3}: {d['tokens_per_s']:.1f} tok/s ({d['step_ms']:.2f} ms/step, context {b['decode_context']}); "
          f"floor {d['floor_ms']:.2f} ms (weights + KV at the copy bandwidth): {100*d['floor_fraction']:.0f}% of it (target >= 85%)")
    print(f"      launched kernel by kernel {d['launched_step_ms']:.2f} ms; stages (device ms): {stages(d['launched_stage_ms'])}")
print(f"  batch-1 decode at {100*b['decode_batch1_bandwidth_fraction']:.0f}% of device bandwidth (target >= 85%); "
      f"{b['decode_batch1_tokens_per_s_cublaslt_only']:.1f} tok/s with cuBLASLt for every decode GEMM instead")
for name, rows in b.get("decode_variants", {}).items():
    print(f"  variant {name}: " + ", ".join(f"batch {d['batch']} {d['step_ms']:.2f} ms ({100*d['floor_fraction']:.0f}%)" for d in rows))
print(f"  prefill {b['prefill_tokens']} tokens: {b['prefill_tokens_per_s']:.0f} tok/s, {b['prefill_tflops']:.0f} TFLOP/s = "
      f"{100*b['prefill_fraction_of_gemm']:.0f}% of the GEMM (target >= 50%); in chunks of {b['prefill_chunk']} "
      f"as the server schedules it: {b['prefill_chunked_tokens_per_s']:.0f} tok/s")
print(f"  prefill stages (device ms): {stages(b['prefill_stage_ms'])}")
print("  decode GEMMs, share of the copy bandwidth (default / batch-invariant kernels / cuBLASLt alone):")
for r in b.get("decode_gemm_sweep", []):
    line = (f"    {r['product']:>7} {r['N']}x{r['K']} rows {r['rows']:>2}: {100*r['default']['bandwidth_fraction']:.0f}% / "
            f"{100*r['batch_invariant']['bandwidth_fraction']:.0f}% / {100*r['cublaslt']['bandwidth_fraction']:.0f}%")
    if "tensor_core_kernel_bandwidth_fraction_by_split" in r:
        line += "; by split " + ", ".join(f"{k}: {100*v:.0f}%" for k, v in r["tensor_core_kernel_bandwidth_fraction_by_split"].items())
        line += f" (chosen {r['split_chosen']})"
    print(line)
p = b.get("planned_memory", {})
if p:
    gib = lambda x: x / 2**30
    print(f"  memory planned at --gpu_memory_fraction {p['gpu_memory_fraction']}: total {gib(p['total_bytes']):.1f} GiB, weights "
          f"{gib(p['weights_bytes']):.1f}, step buffers {gib(p['step_buffer_bytes']):.2f}, in use before the cache "
          f"{gib(p['used_before_kv_bytes']):.1f}; KV cache {gib(p['kv_bytes']):.1f} GiB = {p['kv_blocks']} blocks = "
          f"{p['kv_tokens']} tokens (limits {p['max_tokens_per_step']} tokens, {p['max_batch_size']} sequences, "
          f"{p['max_model_len']} positions); start {p['start_seconds']:.1f} s; largest step right after start: "
          f"{p['largest_step_right_after_start']}")
for k, v in b.get("errors", {}).items():
    print(f"  ERROR in {k}: {v}")
for t in b.get("tp2_one_gpu_host_collective", []):
    print(f"  TP 2 on one GPU over the host collective, batch {t['batch']}, graphs {'on' if t['graphs'] else 'off'}: "
          f"{t['step_ms']:.2f} ms/step against TP 1's {t['tp1_step_ms']:.2f}")
PY
  else
    echo "FAIL gemma-cuda-bench"; tail -20 "$work/bench.log"; failed=1
  fi
fi

if wants lora; then
  section "LoRA decode on $model: batch 32 over 8 rank-16 adapters (q,k,v,o,gate,up,down), against the base model"
  if timeout "${GEMMA_GPU_LORA_TIMEOUT:-240}" build-gpu/gemma-cuda-bench --model "$model" --make_7b --batches 32 \
       --steps 32 --prompt 512 --sections lora --json "$work/bench-cuda-7b-lora.json" > "$work/bench-lora.log" 2>&1; then
    cp "$work/bench-cuda-7b-lora.json" "${OUT:-$work}/" 2>/dev/null
    python3 - "$work/bench-cuda-7b-lora.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
l = b.get("lora_decode")
if not l:
    print(f"FAIL lora: no figures; errors {b.get('errors')}")
    sys.exit(1)
verdict = "meets" if l["fraction_of_base"] >= 0.8 else "BELOW"
print(f"  batch {l['batch']}, {l['adapters']} adapters of rank {l['adapter_rank']} on {l['targets']}, context {l['context']}: "
      f"{l['tokens_per_s']:.1f} tok/s against the base's {l['base_tokens_per_s_before']:.1f} (before) and "
      f"{l['base_tokens_per_s_after']:.1f} (after) = {l['fraction_of_base']:.2f} of base ({verdict} the 0.8 target)")
print(f"  launched kernel by kernel: {l['launched_step_ms']:.2f} ms/step against the base's {l['base_launched_step_ms']:.2f}; "
      f"stages (device ms) {l['launched_stage_ms']}")
PY
    [[ $? == 0 ]] || failed=1
  else
    echo "FAIL gemma-cuda-bench --sections lora"; tail -20 "$work/bench-lora.log"; failed=1
  fi
fi

if wants weights; then
  section "quantized weights on $model: int8, int4, fp8 quantized at load, decode at batch 1 and 16 against bf16"
  if timeout "${GEMMA_GPU_WEIGHTS_TIMEOUT:-300}" build-gpu/gemma-cuda-bench --model "$model" --make_7b --batches 1,16 \
       --steps 32 --prompt 512 --sections weights --json "$work/bench-cuda-7b-weights.json" > "$work/bench-weights.log" 2>&1; then
    cp "$work/bench-cuda-7b-weights.json" "${OUT:-$work}/" 2>/dev/null
    python3 - "$work/bench-cuda-7b-weights.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
base = {d["batch"]: d for d in b["decode"]}
print(f"GPU {b['gpu']}: copy bandwidth {b['device_bandwidth_bytes_per_s']/1e12:.2f} TB/s; bf16 weights {b['weight_bytes_per_step']/1e9:.2f} GB/step")
for d in b["decode"]:
    print(f"  bf16 batch {d['batch']:>3}: {d['tokens_per_s']:.1f} tok/s ({d['step_ms']:.2f} ms/step), {100*d['floor_fraction']:.0f}% of its floor")
bad = False
for q in b.get("quantized_decode", []):
    if "error" in q:
        print(f"  {q['weights']}: ERROR {q['error']}"); bad = True; continue
    for d in q["decode"]:
        ratio = d["tokens_per_s"] / base[d["batch"]]["tokens_per_s"] if d["batch"] in base else 0
        print(f"  {q['weights']:>4} batch {d['batch']:>3}: {d['tokens_per_s']:.1f} tok/s ({d['step_ms']:.2f} ms/step), "
              f"{100*d['floor_fraction']:.0f}% of its floor ({q['weight_bytes_per_step']/1e9:.2f} GB of weights), {ratio:.2f}x bf16; "
              f"launched {d['launched_step_ms']:.2f} ms, stages {d['launched_stage_ms']}")
sys.exit(1 if bad else 0)
PY
    [[ $? == 0 ]] || failed=1
  else
    echo "FAIL gemma-cuda-bench --sections weights"; tail -20 "$work/bench-weights.log"; failed=1
  fi
fi

if wants gemma23; then
  g3=${GEMMA_GEMMA3_MODEL:-/tmp/gemma3-27b-random}
  section "gemma-cuda-bench on the Gemma 3 27B shape ($g3, written first if absent): bf16, one GPU"
  if timeout "${GEMMA_GPU_BENCH_TIMEOUT:-420}" build-gpu/gemma-cuda-bench --model "$g3" --make_shape gemma3-27b \
       --batches 1,16 --long_context "${GEMMA_GEMMA3_LONG_CONTEXT:-32768}" --sections "" --json "$work/bench-cuda-gemma3-27b.json" \
       > "$work/bench-gemma3.log" 2>&1; then
    cp "$work/bench-cuda-gemma3-27b.json" "${OUT:-$work}/" 2>/dev/null
    python3 - "$work/bench-cuda-gemma3-27b.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
print(f"GPU {b['gpu']}: copy bandwidth {b['device_bandwidth_bytes_per_s']/1e12:.2f} TB/s, cuBLASLt bf16 GEMM {b['gemm_bf16_tflops']:.0f} TFLOP/s")
for d in b["decode"]:
    print(f"  decode batch {d['batch']:>3}: {d['tokens_per_s']:.1f} tok/s ({d['step_ms']:.2f} ms/step, context {b['decode_context']}); "
          f"{100*d['floor_fraction']:.0f}% of the floor (weights + KV at the copy bandwidth)")
print(f"  batch-1 decode at {100*b['decode_batch1_bandwidth_fraction']:.0f}% of the copy bandwidth on the weights (target >= 75%)")
print(f"  prefill {b['prefill_tokens']} tokens: {b['prefill_tokens_per_s']:.0f} tok/s, {b['prefill_tflops']:.0f} TFLOP/s = "
      f"{100*b['prefill_fraction_of_gemm']:.0f}% of the GEMM (target >= 50%); chunks of {b['prefill_chunk']}: "
      f"{b['prefill_chunked_tokens_per_s']:.0f} tok/s")
lc = b.get("long_context") or {}
for k in ("windowed", "full_attention"):
    r = lc.get(k, {})
    if "error" in r:
        print(f"  context {lc.get('context')}, {k}: ERROR {r['error']}")
    elif r:
        print(f"  context {lc.get('context')}, {k}: {r['tokens_per_s']:.1f} tok/s ({r['step_ms']:.2f} ms/step), KV read "
              f"{r['kv_bytes_read']/1e9:.2f} GB/step, {100*r['floor_fraction']:.0f}% of its floor; stages {r['launched_stage_ms']}")
for k, v in b.get("errors", {}).items():
    print(f"  ERROR in {k}: {v}")
PY
  else
    echo "FAIL gemma-cuda-bench gemma3-27b"; tail -20 "$work/bench-gemma3.log"; failed=1
  fi
fi

if wants overlap; then
  section "the router's share of a batch-1 token on $model: overlapped steps off and on, against the engine alone"
  # The engine alone at the requests' mean context (128-token prompts, 128 new tokens).
  if timeout 240 build-gpu/gemma-cuda-bench --model "$model" --make_7b --batches 1 --context 192 --steps 64 \
       --prompt 128 --sections "" --json "$work/overlap-engine.json" > "$work/overlap-engine.log" 2>&1; then
    engine=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["decode"][0]["tokens_per_s"])' \
      "$work/overlap-engine.json")
    echo "engine alone, batch 1, context 192: $engine tok/s"
    for o in off on; do
      if GEMMA_OVERLAP_STEPS=$o timeout 150 bash scripts/gpu-serve-bench.sh "$model" 1 128 128 \
           > "$work/overlap-$o.json" 2> "$work/overlap-$o.log"; then
        cp "$work/overlap-$o.json" "${OUT:-$work}/" 2>/dev/null
        echo "overlapped steps $o:"; python3 scripts/router_bench_summary.py "$work/overlap-$o.json" "$engine"
      else
        echo "FAIL router bench, overlap $o"; tail -15 "$work/overlap-$o.log"; failed=1
      fi
    done
    cp "$work/overlap-engine.json" "${OUT:-$work}/" 2>/dev/null
  else
    echo "FAIL gemma-cuda-bench (engine alone)"; tail -20 "$work/overlap-engine.log"; failed=1
  fi
fi

if wants router; then
  section "the serving stack on the GPU under load: gemma serve --device cuda, gemma bench --server"
  if timeout 300 bash scripts/gpu-serve-bench.sh "$model" > "$work/bench-router-gpu.json" 2> "$work/bench-router-gpu.log"; then
    cp "$work/bench-router-gpu.json" "${OUT:-$work}/" 2>/dev/null
    engine=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["decode"][0]["tokens_per_s"])' \
      "$work/bench-cuda-7b.json" 2>/dev/null || echo 0)
    python3 scripts/router_bench_summary.py "$work/bench-router-gpu.json" "$engine"
  else
    echo "FAIL router bench"; tail -15 "$work/bench-router-gpu.log"; failed=1
  fi
fi

if wants hf; then
  section "Hugging Face transformers, same checkpoint: eager generate, and static cache + torch.compile at batch 1 and 16"
  # The script answers the time limit's TERM with the figures it has, so a slow compile still leaves a JSON line.
  PYTHONUNBUFFERED=1 timeout 300 python3 scripts/hf_baseline.py "$model" 64 --batches 1,16 \
    > "$work/hf-baseline.json" 2> "$work/hf-baseline.log"
  hf_rc=$?
  cp "$work/hf-baseline.json" "${OUT:-$work}/" 2>/dev/null
  python3 - "$work/hf-baseline.json" "$work/bench-cuda-7b.json" <<'PY'
import json, sys
try:
    h = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
except (OSError, ValueError, IndexError):
    print("FAIL hf baseline: no JSON"); sys.exit(1)
print(f"transformers {h.get('transformers_version')} (PyTorch {h.get('torch_version')}) on {h.get('gpu')}, "
      f"bf16, sdpa, greedy, prompt {h.get('context')} tokens")
if "eager_batch1_tokens_per_s" in h:
    print(f"  eager generate, batch 1: {h['eager_batch1_tokens_per_s']:.1f} tok/s ({h['eager_batch1_step_ms']:.2f} ms/step)")
c = h.get("compile") or {}
for e in h.get("compiled", []):
    print(f"  static cache + torch.compile ({c.get('mode')}, fullgraph={c.get('fullgraph')}), batch {e['batch']:>3}: "
          f"{e['tokens_per_s']:.1f} tok/s, {e['tokens_per_s_per_seq']:.1f} per sequence ({e['step_ms']:.2f} ms/step, "
          f"positions {e['first_position']}-{e['last_position']})" + (" RECOMPILED WHILE TIMED" if e.get("recompiled_while_timed") else ""))
if h.get("compiled"):
    print(f"  compile + warm-up {h.get('compile_seconds', 0):.0f} s (not timed), load {h.get('load_seconds', 0):.0f} s")
bad = [k for k in ("error", "eager_error", "fullgraph_error", "compiled_error") if h.get(k)]
for k in bad:
    print(f"  {k}: {h[k]}")
try:
    g = {d["batch"]: d["tokens_per_s"] for d in json.load(open(sys.argv[2]))["decode"]}
except (OSError, ValueError, KeyError):
    g = {}
t = {e["batch"]: e["tokens_per_s"] for e in h.get("compiled", [])}
ratios = [f"batch {b} {g[b] / t[b]:.2f}x" for b in sorted(t) if b in g and t[b] > 0]
if ratios:
    print(f"gemma-serve / compiled transformers: {', '.join(ratios)} (target >= 2x at batch 1)")
else:
    print("gemma-serve / compiled transformers: no common batch (bench part not run, or no compiled figures)")
sys.exit(1 if h.get("error") or h.get("compiled_error") or not t else 0)
PY
  summary_rc=$?
  if [[ $hf_rc != 0 || $summary_rc != 0 ]]; then
    echo "FAIL hf baseline (exit $hf_rc)"; grep -v "^\[ *[0-9]* s\]" "$work/hf-baseline.log" | tail -8; failed=1
  fi
fi
section "done ($([[ $failed == 0 ]] && echo all passed || echo some FAILED))"
exit $failed
