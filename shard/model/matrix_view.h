// A non-owning view of a weight matrix in one of the stored formats: the shape every backend reads weights through.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"

namespace gemma {

// How a matrix's elements are stored. Each quantized element dequantizes on its own (ElementAt); a kernel may
// apply scales and zeros per row or group instead, which agrees with f32 math over the dequantized matrix to
// float rounding.
enum class WeightFormat : uint8_t {
  kBF16,  // data: bf16 [rows, stride]
  kF32,   // f32: [rows, stride]; dequantized copies, the reference that quantized kernels are checked against
  kInt8,  // codes: int8 [rows, stride]; w = code * scales[r] (symmetric, one scale per output channel)
  // codes: [rows, stride / 2] bytes, element 2i in the low nibble of byte i and 2i + 1 in the high one (the order
  // GPTQ packs its int32 words in); w = (code - zeros[r, g]) * scales[r, g] for group g = k / group_size. Rows
  // are whole groups (cols a multiple of group_size, which is 32, 64 or 128).
  kInt4,
  kFp8,  // codes: E4M3 bytes [rows, stride]; w = e4m3(code) * scales[r] (per output channel or one per tensor)
};

// A [rows, cols] matrix whose rows are `stride` elements apart (a column slice of a larger matrix has
// stride > cols). Does not own its memory; a plain value, safe to copy and to read from any thread while the
// memory lives. Exactly one of data / f32 / codes is set, by `format`.
struct MatrixView {
  const uint16_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t stride = 0;
  WeightFormat format = WeightFormat::kBF16;
  const float* f32 = nullptr;
  const uint8_t* codes = nullptr;
  const float* scales = nullptr;  // kInt8, kFp8: [rows] (scale_stride 1); kInt4: [rows, scale_stride]
  const float* zeros = nullptr;   // kInt4: [rows, scale_stride], whole numbers (0..16: GPTQ's format stores zero - 1)
  int64_t scale_stride = 0;
  int group_size = 0;  // kInt4: elements per group along a row; every group starts at a multiple of it
};

// "bf16", "f32", "int8", "int4", "fp8".
const char* WeightFormatName(WeightFormat format);

// Rows [begin, begin + count); always exact.
MatrixView RowSlice(const MatrixView& m, int64_t begin, int64_t count);
// Columns [begin, begin + count). A 4-bit matrix can only be cut into whole groups (a group's scale covers all
// of its columns): InvalidArgument naming `what` otherwise.
absl::StatusOr<MatrixView> ColSlice(const MatrixView& m, int64_t begin, int64_t count, const char* what);
// Bytes a pass over the matrix reads: elements plus scales and zeros.
int64_t StoredBytes(const MatrixView& m);
// Element (r, k) as f32, dequantized. Not for hot loops.
float ElementAt(const MatrixView& m, int64_t r, int64_t k);
// Row r dequantized into out[0, cols), each element as ElementAt gives it.
void DequantizeRow(const MatrixView& m, int64_t r, float* out);

}  // namespace gemma
