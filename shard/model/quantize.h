// Weight precisions a shard loads in, and quantizing a matrix into the stored formats of matrix_view.h.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "shard/model/matrix_view.h"

namespace gemma {

// What `--weights` asks for. Quantized modes quantize the bf16 checkpoint at load (round to nearest):
//  int8: symmetric, one scale per output channel, every matrix including the embedding / LM head.
//  int4: 4-bit codes with a scale and a zero per group of input columns (GPTQ/AWQ's W4A16 arithmetic); the
//        embedding / LM head keeps int8, as llama.cpp keeps its output matrix at higher precision.
//  fp8:  E4M3 with one scale per output channel (compressed-tensors' channel strategy), every matrix including
//        the embedding / LM head. The CPU widens the codes in registers; GPUs need compute capability 8.9.
enum class WeightPrecision : uint8_t { kBF16, kInt8, kInt4, kFp8 };

absl::StatusOr<WeightPrecision> ParseWeightPrecision(absl::string_view name);
const char* WeightPrecisionName(WeightPrecision precision);
// The values ParseWeightPrecision takes, for flag help and errors.
constexpr char kWeightPrecisionNames[] = "bf16, int8, int4, fp8";

// The largest of preferred, preferred / 2, ... 32 that divides `cols` and every cut point (tensor-parallel slice
// boundaries and sizes along the input); 0 when none does.
int PickGroupSize(int64_t cols, int preferred, std::initializer_list<int64_t> cuts);

// A requested int4 group size: 32, 64 or 128, or (with `zero_chooses`) 0 to let the loader pick one that fits.
// `what` names it in the error ("--int4-group-size").
absl::Status ValidateInt4GroupSize(int64_t size, bool zero_chooses, absl::string_view what);
// The sizes ValidateInt4GroupSize takes, as its error lists them ("32, 64, 128 (or 0 to choose)").
std::string AllowedInt4GroupSizes(bool zero_chooses);

// Bytes QuantizeInto writes for a [rows, cols] matrix.
int64_t QuantizedBytes(WeightFormat format, int64_t rows, int64_t cols, int group_size);

// Where the parts of a kInt4 matrix lie in QuantizedBytes of `memory`: codes, then scales, then zeros, each
// 64-byte aligned; `view` points at them (stride == cols, a whole number of groups).
struct Int4Parts {
  uint8_t* codes;
  float* scales;
  float* zeros;
  MatrixView view;
};
Int4Parts LayOutInt4(uint8_t* memory, int64_t rows, int64_t cols, int group_size);

// Quantizes rows [row_begin, row_begin + rows) and columns [col_begin, col_begin + cols) of `src` (any format)
// into `memory` (QuantizedBytes of it, 64-byte aligned) and returns the view of it (stride == cols).
//  kInt8: the scale of a row is max |w| / 127 over the whole source row, so column slices of one row share it
//         and a tensor-parallel rank quantizes exactly as one rank holding the whole matrix.
//  kFp8:  the same with max |w| / 448, codes rounded to the nearest E4M3 value.
//  kInt4: per group of `group_size` columns (col_begin and cols multiples of it): the range [min(w, 0),
//         max(w, 0)] in 15 steps, zero = round(-min / scale), code = clamp(round(w / scale) + zero, 0, 15).
// Parallel over rows.
MatrixView QuantizeInto(const MatrixView& src, int64_t row_begin, int64_t rows, int64_t col_begin, int64_t cols,
                        WeightFormat format, int group_size, uint8_t* memory);

// A matrix QuantizeInto wrote into memory of its own (tests, tools): `view` points into `memory`, so it moves but
// never copies.
struct QuantizedMatrix {
  std::unique_ptr<uint8_t, decltype(&std::free)> memory{nullptr, &std::free};
  MatrixView view;
};
QuantizedMatrix Quantize(const MatrixView& src, int64_t row_begin, int64_t rows, int64_t col_begin, int64_t cols,
                         WeightFormat format, int group_size);
// The whole of `src`.
QuantizedMatrix Quantize(const MatrixView& src, WeightFormat format, int group_size);

// `m` dequantized into `memory` ([rows, cols] f32), as a kF32 view.
MatrixView DequantizeInto(const MatrixView& m, float* memory);

}  // namespace gemma
