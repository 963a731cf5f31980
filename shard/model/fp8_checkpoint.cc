#include "shard/model/fp8_checkpoint.h"

#include <cmath>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/status_macros.h"
#include "shard/model/dtype.h"
#include "shard/model/quantize.h"

namespace gemma {

bool IsFp8Module(const Checkpoint& checkpoint, const std::string& module) {
  auto t = checkpoint.Raw(module + ".weight");
  // E5M2 too, so that ReadFp8 refuses it naming the FP8 format that loads (E4M3), not the float ones.
  return t.ok() && (t->dtype == DType::kF8E4M3 || t->dtype == DType::kF8E5M2);
}

absl::StatusOr<MatrixView> ReadFp8(const Checkpoint& checkpoint, const std::string& module, int64_t out, int64_t in,
                                   int64_t row_begin, int64_t rows, int64_t col_begin, int64_t cols,
                                   const std::function<uint8_t*(int64_t)>& allocate) {
  ASSIGN_OR_RETURN(const StoredTensor weight, checkpoint.Get(module + ".weight", {out, in}, {DType::kF8E4M3}));
  const std::string scale_name = module + ".weight_scale";
  ASSIGN_OR_RETURN(const StoredTensor scale, checkpoint.Raw(scale_name));
  if (scale.dtype != DType::kF32 && scale.dtype != DType::kBF16 && scale.dtype != DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat(checkpoint.dir(), ": ", scale_name, " is ", DTypeName(scale.dtype),
                                                   "; allowed: F32, BF16, F16"));
  }
  int64_t elements = 1;
  for (int64_t d : scale.shape) elements *= d;
  const bool per_channel = scale.shape == std::vector<int64_t>{out, 1} || scale.shape == std::vector<int64_t>{out};
  const bool per_tensor = scale.shape.empty() || scale.shape == std::vector<int64_t>{1};
  if (!per_channel && !per_tensor) {
    return absl::InvalidArgumentError(absl::StrCat(
        checkpoint.dir(), ": ", scale_name, " has shape [", absl::StrJoin(scale.shape, ", "), "]; allowed: [", out,
        ", 1] or [", out, "] (one scale per output channel) or [1] / [] (one for the tensor)"));
  }
  if (static_cast<uint64_t>(elements) * DTypeSize(scale.dtype) != scale.num_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(checkpoint.dir(), ": ", scale_name, " holds ", scale.num_bytes,
                                                   " bytes, not the ", elements, " elements its shape names"));
  }
  uint8_t* memory = allocate(QuantizedBytes(WeightFormat::kFp8, rows, cols, 0));
  uint8_t* codes = memory;
  auto* scales = reinterpret_cast<float*>(memory + (rows * cols + 63) / 64 * 64);
  const auto* src = reinterpret_cast<const uint8_t*>(weight.data);
  int64_t bad_row = -1;
#pragma omp parallel for schedule(static) reduction(max : bad_row)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = row_begin + r;
    scales[r] = FloatElementAsF32(scale.dtype, scale.data, per_channel ? n : 0);
    std::memcpy(codes + r * cols, src + n * in + col_begin, cols);
    for (int64_t k = 0; k < cols; ++k) {
      if ((codes[r * cols + k] & 0x7f) == 0x7f) bad_row = std::max(bad_row, n);
    }
  }
  if (bad_row >= 0) {
    return absl::InvalidArgumentError(absl::StrCat(checkpoint.dir(), ": ", module, ".weight row ", bad_row,
                                                   " holds an E4M3 NaN code (0x7f or 0xff)"));
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (!std::isfinite(scales[r]) || scales[r] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(checkpoint.dir(), ": ", scale_name, "[",
                                                     per_channel ? row_begin + r : 0, "] is ", scales[r],
                                                     "; a scale must be a finite number of at least 0"));
    }
  }
  MatrixView v;
  v.format = WeightFormat::kFp8;
  v.rows = rows;
  v.cols = cols;
  v.stride = cols;
  v.scale_stride = 1;
  v.codes = codes;
  v.scales = scales;
  return v;
}

}  // namespace gemma
