#!/usr/bin/env python3
"""One line per concurrency level of a `gemma bench --server --json` result and, given the engine's own batch-1
decode rate, the router's overhead at concurrency 1 (mean inter-token time against the engine).

usage: router_bench_summary.py ROUTER_JSON [ENGINE_TOKENS_PER_S]
"""
import json
import sys


def main():
    router = json.load(open(sys.argv[1]))
    engine = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    for level in router["levels"]:
        itl = level["inter_token_s"]["mean"]
        print(f"  concurrency {level['concurrency']:>3}: {level['tokens_per_s']:.1f} tok/s aggregate "
              f"({level['ok']}/{level['requests']} ok), per-request {1/itl if itl else 0:.1f} tok/s, "
              f"TTFT p50 {1000*level['ttft_s']['p50']:.0f} ms, ITL p50 {1000*level['inter_token_s']['p50']:.2f} ms, "
              f"p99 {1000*level['inter_token_s']['p99']:.2f} ms")
        if level["concurrency"] == 1 and itl and engine:
            print(f"  router overhead at batch 1: {100 * (1 - (1 / itl) / engine):.1f}% "
                  f"({1/itl:.1f} tok/s per request against {engine:.1f} for the engine alone)")


if __name__ == "__main__":
    main()
