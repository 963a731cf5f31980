// Products at int8 activations over int8 weights (--activations int8 with --weights int8, W8A8; 4-bit weights,
// W4A8, in matmul_w4a8.h): each token's row quantized symmetrically (one scale, max |x| / 127), multiplied with
// the weights' int8 codes by AVX512-VNNI (vpdpbusd: four 8-bit products a lane, summed into int32), four times the
// f32 kernel's multiply-adds an instruction. The integer sums are exact; the scales apply once per output. Opt-in:
// quantizing x costs accuracy (docs/BENCHMARKS.md says how much).
#pragma once

#include <cstdint>
#include <span>

#include "shard/model/matrix_view.h"

namespace gemma {

// Whether this CPU has AVX512-VNNI (Cascade Lake and later, Zen 4 and later); decided at run time.
bool HasInt8DotProducts();

// Row m of x as int8 codes: q[k] = round(x[k] / scale) (to nearest even), scale = max |x[k]| / 127 (0 for a zero
// row, whose codes are 0); returns the scale. `sum` gets the sum of the codes. NaN (codes 0) for a row with a
// non-finite value or too small to scale: MatMulInt8Activations then runs that row on the f32 kernel.
float QuantizeActivationRow(const float* x, int64_t K, int8_t* q, int32_t* sum);

// As MatMul (matmul.h) for int8 views: out[m * ldo + n] = xs[m] * ws[n] * sum_k q[m, k] * code[n, k], with q, xs
// each row of x quantized by QuantizeActivationRow and ws the weights' per-row scales; for 4-bit views that
// Int4Int8Fits accepts, MatMulInt4Int8's sum over groups. A row's result does not depend on M or on the other
// rows. False, computing nothing, when the CPU lacks AVX512-VNNI or the views are neither: the caller runs MatMul.
bool MatMulInt8Activations(const float* x, int64_t M, int64_t K, int64_t ldx, std::span<const MatrixView> weights,
                           float* out, int64_t ldo);

}  // namespace gemma
