// The instruction sets the hand-written dot-product kernels are compiled for, one attribute per kernel family.
// Each is used only after its run-time check says this CPU has them.
#pragma once

// matmul_int8.cc and matmul_w4a8.cc, checked by HasInt8DotProducts.
#define GEMMA_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

// matmul_bf16.cc (VBMI for fp8's byte permutes), checked by HasBf16DotProducts.
#define GEMMA_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx512vbmi")))
