// Products at bf16 activations (--activations bf16): x rounded to bf16 and multiplied with bf16 weights by
// AVX512-BF16 dot products (vdpbf16ps: two bf16 products a lane, summed into f32), about twice the f32 kernel's
// multiply-adds an instruction. Opt-in: rounding x costs accuracy (docs/BENCHMARKS.md says how much).
#pragma once

#include <cstdint>
#include <span>

#include "shard/model/matrix_view.h"

namespace gemma {

// Whether this CPU has AVX512-BF16 (Zen 4 and later, Sapphire Rapids and later); decided at run time.
bool HasBf16DotProducts();

// As MatMul (matmul.h), with x rounded to bf16 (round to nearest even) first: out[m * ldo + n] =
// sum_k bf16(x[m, k]) * W[n, k], every W a kBF16 view. Each output is summed in the same order whatever M is.
// False, computing nothing, when the CPU lacks AVX512-BF16 or a view is not bf16: the caller runs MatMul.
bool MatMulBf16Activations(const float* x, int64_t M, int64_t K, int64_t ldx, std::span<const MatrixView> weights,
                           float* out, int64_t ldo);

}  // namespace gemma
