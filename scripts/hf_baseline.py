#!/usr/bin/env python3
"""Hugging Face transformers decoding from a gemma-serve checkpoint directory on one GPU, greedy, bf16, SDPA: the
side-by-side baseline for gemma-cuda-bench. Two paths, in one process on the same weights:

- eager `generate` at batch 1 (what a first try gets), and
- the strongest stock PyTorch path: a static KV cache (transformers' StaticCache) and the model's forward compiled
  with torch.compile(mode="reduce-overhead", fullgraph=True), driven one token at a time by a plain loop as gpt-fast
  does, at each of --batches.

Each decodes after a prompt of --prompt random token ids. Compilation and CUDA-graph capture happen in warm-up steps
that are timed apart (compile_seconds); only the steps after them are measured. Prints one JSON object on stdout,
progress on stderr. A failure in the compiled path is reported in the JSON (compiled_error), not raised.

usage: hf_baseline.py MODEL_DIR [NEW_TOKENS] [--batches 1,16] [--prompt 512] [--warmup 4] [--device cuda]
                      [--no-compile] [--no-eager]
Smoke test without a GPU: hf_baseline.py tests/data/gemma-tiny/tiny-mha 8 --prompt 32 --batches 1,2 --device cpu
--no-compile
"""
import argparse
import inspect
import json
import os
import signal
import sys
import time
import traceback

import torch
import transformers
from transformers import AutoModelForCausalLM

T0 = time.perf_counter()
result = {"framework": "transformers"}


def log(msg):
    print(f"[{time.perf_counter() - T0:5.0f} s] {msg}", file=sys.stderr, flush=True)


def emit():
    print(json.dumps(result), flush=True)


def on_term(signum, frame):
    # A time limit outside (timeout(1)) still gets the figures measured so far rather than nothing.
    log(f"signal {signum}: printing what was measured so far")
    result.setdefault("compiled_error", None)
    if result["compiled_error"] is None and len(result.get("compiled", [])) < len(result.get("batches", [])):
        result["compiled_error"] = f"cut short by signal {signum} (time limit) while at: {result.get('stage')}"
    emit()
    # Not sys.exit: compile worker pools and CUDA teardown could outlast the limit that sent the signal.
    os._exit(1)


def short(e):
    text = f"{type(e).__name__}: {e}"
    return text if len(text) < 600 else text[:600] + " ..."


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("new_tokens", nargs="?", type=int, default=64, help="decode steps timed per path")
    p.add_argument("--batches", default="1,16", help="batch sizes for the compiled static-cache path")
    p.add_argument("--prompt", type=int, default=512, help="prompt length (random ids) before decoding")
    p.add_argument("--warmup", type=int, default=4,
                   help="untimed compiled steps first: compile, CUDA-graph warm-up and capture, one replay")
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-compile", action="store_true", help="static-cache loop with the eager forward")
    p.add_argument("--no-fullgraph", action="store_true", help="let the compiler break the graph from the start")
    p.add_argument("--no-eager", action="store_true", help="skip eager generate")
    a = p.parse_args()
    a.batches = [int(b) for b in a.batches.split(",") if b]
    if a.new_tokens < 2 or a.prompt < 1 or a.warmup < 0 or not a.batches or min(a.batches) < 1:
        p.error("NEW_TOKENS >= 2, --prompt >= 1, --warmup >= 0, --batches positive")
    return a


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load(args):
    # transformers 5 names the dtype argument dtype; older releases torch_dtype.
    common = dict(device_map=args.device, attn_implementation="sdpa")
    try:
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.bfloat16, **common)
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, torch_dtype=torch.bfloat16, **common)
    model = model.eval()
    assert next(model.parameters()).dtype == torch.bfloat16
    return model


def random_prompt(model, batch, length, device, seed):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(4, model.config.vocab_size, (batch, length), generator=g)
    prompt[:, 0] = model.config.bos_token_id if model.config.bos_token_id is not None else 2
    return prompt.to(device)


def eager_generate(model, prompt, new_tokens, device):
    """Batch-1 generate with its default (dynamic) cache: decode time = the run of new_tokens less a run of 1."""
    mask = torch.ones_like(prompt)

    def run(n):
        sync(device)
        start = time.perf_counter()
        out = model.generate(prompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        sync(device)
        return time.perf_counter() - start, out

    with torch.inference_mode():
        run(4)  # warm-up: kernels chosen, allocator primed
        prefill, _ = run(1)
        total, out = run(new_tokens)
    decode = total - prefill
    return {"tokens_per_s": (new_tokens - 1) / decode, "step_ms": 1000 * decode / (new_tokens - 1),
            "tokens": out[0, prompt.shape[1]:].tolist()}


def make_static_cache(model, batch, max_len, device):
    from transformers import StaticCache
    try:
        # transformers >= 4.56 (5.x): sized by the config and max_cache_len; batch, dtype and device are taken from
        # the first update (the eager prefill below), before the compiled step sees the cache.
        return StaticCache(config=model.config, max_cache_len=max_len)
    except TypeError:
        return StaticCache(config=model.config, max_batch_size=batch, max_cache_len=max_len, device=device,
                           dtype=model.dtype)


def forward_params(model):
    return inspect.signature(model.forward).parameters


def static_decode(model, step, batch, args, device, compiled):
    """Prefill eagerly into a StaticCache, then decode greedily one token a step through `step`: args.warmup steps
    untimed (compilation and graph capture), then args.new_tokens timed. Returns the measured figures."""
    params = forward_params(model)
    extra = {}
    if "logits_to_keep" in params:  # the prefill needs the last position's logits only (16 x 512 x 256000 else)
        extra["logits_to_keep"] = 1
    elif "num_logits_to_keep" in params:
        extra["num_logits_to_keep"] = 1
    with_cache_position = "cache_position" in params
    P, W, N = args.prompt, args.warmup, args.new_tokens
    prompt = random_prompt(model, batch, P, device, seed=batch)
    cache = make_static_cache(model, batch, P + W + N, device)

    def kwargs(pos):
        k = {"past_key_values": cache, "use_cache": True}
        if with_cache_position:
            k["cache_position"] = pos
        return k

    mark_step = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)
    tokens = []
    with torch.no_grad():
        result["stage"] = f"prefill, batch {batch}"
        positions = torch.arange(P, device=device)
        out = model(input_ids=prompt, position_ids=positions.unsqueeze(0).expand(batch, -1), **kwargs(positions),
                    **extra)
        tok = out.logits[:, -1].argmax(dim=-1, keepdim=True)
        del out
        tokens.append(tok)
        # Fixed addresses, advanced in place: the compiled step sees the same input tensors every time.
        cache_position = torch.full((1,), P, dtype=torch.long, device=device)
        position_ids = torch.full((batch, 1), P, dtype=torch.long, device=device)

        def one():
            nonlocal tok
            if compiled and mark_step is not None:
                mark_step()
            logits = step(input_ids=tok, position_ids=position_ids, **kwargs(cache_position)).logits
            # argmax reads the graph's output buffer before the next replay reuses it.
            tok = logits[:, -1].argmax(dim=-1, keepdim=True)
            tokens.append(tok)
            cache_position.add_(1)
            position_ids.add_(1)

        result["stage"] = f"{'compiling and ' if compiled else ''}warming up, batch {batch}"
        sync(device)
        start = time.perf_counter()
        for i in range(W):
            one()
            sync(device)
            log(f"  batch {batch}: warm-up step {i + 1}/{W} done at {time.perf_counter() - start:.1f} s")
        warmup_s = time.perf_counter() - start
        graphs_before = unique_graphs()
        result["stage"] = f"timed decode, batch {batch}"
        sync(device)
        start = time.perf_counter()
        for _ in range(N):
            one()
        sync(device)
        elapsed = time.perf_counter() - start
        graphs_after = unique_graphs()
    entry = {"batch": batch, "step_ms": 1000 * elapsed / N, "tokens_per_s_per_seq": N / elapsed,
             "tokens_per_s": batch * N / elapsed, "warmup_seconds": warmup_s,
             "first_position": P + W, "last_position": P + W + N - 1, "cache_len": P + W + N}
    if graphs_before is not None and graphs_after != graphs_before:
        entry["recompiled_while_timed"] = True  # the figure then includes compilation: not a fair one
    seq0 = torch.cat(tokens, dim=1)[0].tolist()
    del cache, tokens
    return entry, seq0


def unique_graphs():
    try:
        return torch._dynamo.utils.counters["stats"]["unique_graphs"]
    except Exception:
        return None


def free(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main():
    args = parse_args()
    signal.signal(signal.SIGTERM, on_term)
    device = torch.device(args.device)
    result.update({"transformers_version": transformers.__version__, "torch_version": torch.__version__,
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else args.device,
                   "context": args.prompt, "new_tokens": args.new_tokens, "batches": args.batches,
                   "dtype": "bfloat16", "attn_implementation": "sdpa", "decoding": "greedy"})
    result["stage"] = "loading"
    log(f"loading {args.model_dir} (transformers {transformers.__version__}, torch {torch.__version__})")
    start = time.perf_counter()
    model = load(args)
    result["load_seconds"] = time.perf_counter() - start
    log(f"loaded in {result['load_seconds']:.1f} s")

    eager_tokens = None
    if not args.no_eager:
        result["stage"] = "eager generate, batch 1"
        log(f"eager generate, batch 1, {args.new_tokens} new tokens after {args.prompt}")
        try:
            e = eager_generate(model, random_prompt(model, 1, args.prompt, device, seed=1), args.new_tokens, device)
            eager_tokens = e["tokens"]
            # decode_tokens_per_s_batch1: the name docs/hf-baseline-*.json have used for this figure.
            result.update({"eager_batch1_tokens_per_s": e["tokens_per_s"], "eager_batch1_step_ms": e["step_ms"],
                           "decode_tokens_per_s_batch1": e["tokens_per_s"]})
            log(f"eager: {e['tokens_per_s']:.1f} tok/s ({e['step_ms']:.2f} ms/step)")
        except Exception as ex:
            traceback.print_exc()
            result["eager_error"] = short(ex)
        free(device)

    compiled = not args.no_compile
    fullgraph = not args.no_fullgraph
    result.update({"compiled": [], "compiled_error": None,
                   "compile": {"mode": "reduce-overhead", "fullgraph": fullgraph, "dynamic": False,
                               "cache": "StaticCache"} if compiled else None})

    def make_step():
        if not compiled:
            return model.forward
        # dynamic=False: each batch size gets its own specialised graph, as it would in a server with fixed buckets.
        return torch.compile(model.forward, mode="reduce-overhead", fullgraph=fullgraph, dynamic=False)

    step = make_step()
    errors = []
    compile_seconds = 0.0
    for batch in args.batches:
        log(f"static cache{' + torch.compile' if compiled else ''}, batch {batch}: prefill {args.prompt}, "
            f"{args.warmup} warm-up steps, {args.new_tokens} timed")
        entry = None
        for attempt in (1, 2):
            try:
                entry, seq0 = static_decode(model, step, batch, args, device, compiled)
                break
            except Exception as ex:
                traceback.print_exc()
                free(device)
                if attempt == 1 and compiled and fullgraph:
                    # A graph break under fullgraph=True is an error; the same compile allowing breaks is what a
                    # user would fall back to.
                    log(f"batch {batch}: fullgraph compile failed ({short(ex)}); again with fullgraph=False")
                    result["fullgraph_error"] = short(ex)
                    fullgraph = False
                    result["compile"]["fullgraph"] = False
                    getattr(torch.compiler, "reset", torch._dynamo.reset)()
                    step = make_step()
                    continue
                errors.append(f"batch {batch}: {short(ex)}")
                break
        if entry is None:
            continue
        compile_seconds += entry["warmup_seconds"]
        if batch == 1 and eager_tokens is not None:
            # Informational: bf16 rounding may differ between the paths, so a late divergence is not a fault.
            n = min(len(seq0), len(eager_tokens))
            entry["tokens_matching_eager"] = next((i for i in range(n) if seq0[i] != eager_tokens[i]), n)
        result["compiled"].append(entry)
        log(f"batch {batch}: {entry['tokens_per_s']:.1f} tok/s ({entry['tokens_per_s_per_seq']:.1f} per sequence, "
            f"{entry['step_ms']:.2f} ms/step); warm-up {entry['warmup_seconds']:.1f} s")
        free(device)
    result["compile_seconds"] = compile_seconds
    if errors:
        result["compiled_error"] = "; ".join(errors)
    for e in result["compiled"]:
        if e["batch"] == 1:
            result["compiled_batch1_tokens_per_s"] = e["tokens_per_s"]
    result.pop("stage", None)
    result["total_seconds"] = time.perf_counter() - T0
    emit()
    return 0 if not errors and "eager_error" not in result else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException as ex:
        # Whatever broke (loading, out of memory), the reader still gets one JSON line saying so.
        traceback.print_exc()
        result["error"] = short(ex)
        result.setdefault("compiled_error", result["error"])
        emit()
        sys.exit(1)
