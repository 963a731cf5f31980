// Quantized weight matrices on the GPU: the CPU's int8, int4 and fp8 formats (shard/model/matrix_view.h), stored
// densely on the device. A product of a few rows dequantizes in registers while it streams the codes (the point of
// quantizing: a decode step reads a half or a quarter of bf16's bytes); larger products dequantize slices of the
// matrix into a scratch for cuBLASLt (compute-bound there). Plain C++ launchers over device pointers; each returns
// the launch error.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "shard/cuda/kernels.h"

namespace gemma::cuda {

enum class QuantFormat : uint8_t {
  kInt8,  // w = code * scales[r]
  kInt4,  // w = (code - zeros[r, g]) * scales[r, g]; element 2i in the low nibble of byte i
  kFp8,   // w = e4m3(code) * scales[r] (E4M3 "fn": no infinities, 0x7f / 0xff are NaN)
};

// Device pointers; rows are RowBytes() apart, scales and zeros Groups() apart.
struct QuantMatrix {
  QuantFormat format = QuantFormat::kInt8;
  const uint8_t* codes = nullptr;
  const float* scales = nullptr;
  const float* zeros = nullptr;  // kInt4 only
  int64_t rows = 0, cols = 0;
  int group_size = 0;  // kInt4: 32, 64 or 128
  int64_t RowBytes() const { return format == QuantFormat::kInt4 ? cols / 2 : cols; }
  int64_t Groups() const { return format == QuantFormat::kInt4 ? cols / group_size : 1; }
};

// Products of up to this many rows take the streaming kernel.
inline constexpr int kQuantizedGemmMaxRows = 8;

// Whether LaunchQuantizedGemm takes an M-row product with `w`: M <= kQuantizedGemmMaxRows, and rows of whole
// 16-byte loads (cols a multiple of 16 for int8 / fp8, of 32 for int4).
bool QuantizedGemmTakes(const QuantMatrix& w, int64_t M);

// c[m, n] = sum_k a[m, k] * W[n, k] for m < M, n < w.rows: a is [M, w.cols] (a_type, 16-byte aligned rows, w.cols
// apart), c rows ldc apart (f32). One warp per output row streams its codes once; the scales apply per row (per
// group for int4) to the row's sums, which agrees with f32 math over the dequantized matrix to float rounding.
cudaError_t LaunchQuantizedGemm(const QuantMatrix& w, const void* a, Dtype a_type, int M, float* c, int64_t ldc,
                                cudaStream_t stream);

// dst[r, k] = W[row_begin + r, k] for r < rows, as `out` (f32: exactly the value ElementAt gives on the host;
// bf16: that value rounded to nearest even).
cudaError_t LaunchDequantize(const QuantMatrix& w, int64_t row_begin, int64_t rows, Dtype out, void* dst,
                             cudaStream_t stream);

// x[t, :] = W[tokens[t] - vocab_begin, :] * scale, or zeros where the token is not among this rank's w.rows
// (LaunchEmbed's contract, for a quantized embedding).
cudaError_t LaunchEmbedQuantized(const QuantMatrix& w, const int32_t* tokens, int T, int64_t vocab_begin, float scale,
                                 float* x, cudaStream_t stream);
// The same over an f32 table [rows, hidden].
cudaError_t LaunchEmbedF32(const float* table, int64_t rows, int64_t hidden, const int32_t* tokens, int T,
                           int64_t vocab_begin, float scale, float* x, cudaStream_t stream);

}  // namespace gemma::cuda
