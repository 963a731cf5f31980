// 4-bit weights times int8 activations (W4A8, --activations int8 with --weights int4; llama.cpp's q4 x q8_0): the
// weights' codes (0..15) multiplied with each token's int8 codes by AVX512-VNNI, a group's scale applied to its
// integer sums and its zero point taken off through the token's sum of codes over the group. Reached through
// MatMulInt8Activations (matmul_int8.h), which quantizes the activations.
#pragma once

#include <cstdint>
#include <span>

#include "shard/model/matrix_view.h"

namespace gemma {

// Whether MatMulInt4Int8 takes these views: all kInt4, one group size, a divisor of 128 and of K.
bool Int4Int8Fits(std::span<const MatrixView> weights, int64_t K);

// out[m * ldo + n] = xs[m] * sum_g scale[n, g] * (sum_{k in g} q[m, k] * code[n, k] - zero[n, g] * sum_{k in g}
// q[m, k]), for x's rows quantized to q [M, K] (K apart) with scales xs [M]. A row's result depends on nothing
// else in the call. Needs AVX512-VNNI and views Int4Int8Fits accepts.
void MatMulInt4Int8(const int8_t* q, const float* xs, int64_t M, int64_t K, std::span<const MatrixView> weights,
                    float* out, int64_t ldo);

}  // namespace gemma
