// out = x * W^T for weights W [rows, K] in any stored format and f32 activations x [M, K]; SIMD with runtime
// dispatch, all threads.
#pragma once

#include <cstdint>
#include <span>

#include "shard/model/matrix_view.h"

namespace gemma {

// For each m < M: out[m * ldo + n] = sum_k x[m * ldx + k] * W[n, k], where W is
// the row-wise concatenation of `weights` (all with cols == K). Each output is
// accumulated in the same order whatever M is, so results are batch-invariant. Quantized weights are widened in
// registers, int4 dequantized there and int8 / fp8 scaled once per row, which agrees with the f32 kernel over
// the dequantized matrix to float32 rounding.
// Thread-safe; parallel over output rows with OpenMP.
void MatMul(const float* x, int64_t M, int64_t K, int64_t ldx, std::span<const MatrixView> weights, float* out,
            int64_t ldo);

// When token tiles read weights widened once rather than each streaming them (see matmul.cc): kAsMeasured, from
// each format's measured threshold; kAlways and kNever let tests compare the two paths on any batch.
enum class MatMulWidening { kAsMeasured, kAlways, kNever };
void SetMatMulWideningForTest(MatMulWidening widening);

// The instruction set MatMul runs on here ("AVX3_ZEN4", "AVX3", "AVX2", ...): the best this CPU has of those
// built in, chosen at run time.
const char* MatMulTarget();

}  // namespace gemma
