#!/usr/bin/env python3
"""Hugging Face transformers generating from a gemma-serve checkpoint directory on one GPU, batch 1, greedy: the
side-by-side baseline for gemma-cuda-bench. Prints JSON: decode tokens/s with a 512-token context.

usage: hf_baseline.py MODEL_DIR [NEW_TOKENS]
"""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    model_dir = sys.argv[1]
    new_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    # Loaded straight onto the GPU. transformers 5 names the dtype argument dtype; older releases torch_dtype.
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map="cuda")
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16, device_map="cuda")
    model = model.eval()
    assert next(model.parameters()).dtype == torch.bfloat16
    vocab = model.config.vocab_size
    prompt = torch.randint(4, vocab, (1, 512), device="cuda")
    prompt[0, 0] = 2
    with torch.inference_mode():
        model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(prompt, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        torch.cuda.synchronize()
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        torch.cuda.synchronize()
        total = time.perf_counter() - start
    print(json.dumps({"framework": "transformers", "gpu": torch.cuda.get_device_name(0), "context": 512,
                      "new_tokens": new_tokens, "decode_tokens_per_s_batch1": (new_tokens - 1) / (total - prefill)}))


if __name__ == "__main__":
    main()
