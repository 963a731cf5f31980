#include "shard/model/quantize.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "shard/model/dtype.h"

namespace gemma {
namespace {

int64_t Align64(int64_t bytes) { return (bytes + 63) / 64 * 64; }

int64_t Groups(int64_t cols, int group_size) { return (cols + group_size - 1) / group_size; }

}  // namespace

absl::StatusOr<WeightPrecision> ParseWeightPrecision(absl::string_view name) {
  if (name == "bf16") return WeightPrecision::kBF16;
  if (name == "int8") return WeightPrecision::kInt8;
  if (name == "int4") return WeightPrecision::kInt4;
  if (name == "fp8") return WeightPrecision::kFp8;
  return absl::InvalidArgumentError(
      absl::StrCat("weights \"", name, "\" is not a weight precision; allowed: ", kWeightPrecisionNames));
}

const char* WeightPrecisionName(WeightPrecision precision) {
  switch (precision) {
    case WeightPrecision::kBF16:
      return "bf16";
    case WeightPrecision::kInt8:
      return "int8";
    case WeightPrecision::kInt4:
      return "int4";
    case WeightPrecision::kFp8:
      return "fp8";
  }
  return "?";
}

absl::Status ValidateInt4GroupSize(int64_t size, bool zero_chooses, absl::string_view what) {
  if (size == 32 || size == 64 || size == 128 || (zero_chooses && size == 0)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " ", size, " is invalid; allowed: ", AllowedInt4GroupSizes(zero_chooses)));
}

std::string AllowedInt4GroupSizes(bool zero_chooses) {
  return zero_chooses ? "32, 64, 128 (or 0 to choose)" : "32, 64, 128";
}

int PickGroupSize(int64_t cols, int preferred, std::initializer_list<int64_t> cuts) {
  for (int g = preferred; g >= 32; g /= 2) {
    bool fits = cols % g == 0;
    for (int64_t c : cuts) fits = fits && c % g == 0;
    if (fits) return g;
  }
  return 0;
}

int64_t QuantizedBytes(WeightFormat format, int64_t rows, int64_t cols, int group_size) {
  switch (format) {
    case WeightFormat::kInt8:
    case WeightFormat::kFp8:
      return Align64(rows * cols) + Align64(4 * rows);
    case WeightFormat::kInt4:
      return Align64(rows * ((cols + 1) / 2)) + 2 * Align64(4 * rows * Groups(cols, group_size));
    default:
      return 0;
  }
}

MatrixView QuantizeInto(const MatrixView& src, int64_t row_begin, int64_t rows, int64_t col_begin, int64_t cols,
                        WeightFormat format, int group_size, uint8_t* memory) {
  MatrixView q;
  q.rows = rows;
  q.cols = cols;
  q.format = format;
  if (format == WeightFormat::kInt8 || format == WeightFormat::kFp8) {
    // One scale per row, mapping its largest |w| onto the format's largest code.
    const bool fp8 = format == WeightFormat::kFp8;
    const float top = fp8 ? kFp8E4M3Max : 127.0f;
    q.stride = cols;
    q.scale_stride = 1;
    uint8_t* codes = memory;
    float* scales = reinterpret_cast<float*>(memory + Align64(rows * cols));
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<float> row(src.cols);
      DequantizeRow(src, row_begin + r, row.data());
      float amax = 0.0f;
      for (float w : row) amax = std::max(amax, std::fabs(w));
      const float scale = amax > 0.0f ? amax / top : 1.0f;
      scales[r] = scale;
      for (int64_t k = 0; k < cols; ++k) {
        const float v = row[col_begin + k] / scale;
        codes[r * cols + k] = fp8 ? F32ToFp8E4M3(v)
                                  : static_cast<uint8_t>(static_cast<int8_t>(std::clamp(std::nearbyint(v), -127.0f, 127.0f)));
      }
    }
    q.codes = codes;
    q.scales = scales;
    return q;
  }
  const Int4Parts parts = LayOutInt4(memory, rows, cols, group_size);
  const int64_t groups = parts.view.scale_stride;
  uint8_t* codes = parts.codes;
  float* scales = parts.scales;
  float* zeros = parts.zeros;
  q = parts.view;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> row(src.cols);
    DequantizeRow(src, row_begin + r, row.data());
    uint8_t* out = codes + r * (q.stride / 2);
    std::fill(out, out + q.stride / 2, 0);
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t k0 = g * group_size, k1 = std::min<int64_t>(cols, k0 + group_size);
      float lo = 0.0f, hi = 0.0f;
      for (int64_t k = k0; k < k1; ++k) {
        lo = std::min(lo, row[col_begin + k]);
        hi = std::max(hi, row[col_begin + k]);
      }
      const float scale = hi > lo ? (hi - lo) / 15.0f : 1.0f;
      const float zero = std::clamp(std::nearbyint(-lo / scale), 0.0f, 15.0f);
      scales[r * groups + g] = scale;
      zeros[r * groups + g] = zero;
      for (int64_t k = k0; k < k1; ++k) {
        const int code = static_cast<int>(std::clamp(std::nearbyint(row[col_begin + k] / scale) + zero, 0.0f, 15.0f));
        out[k / 2] |= static_cast<uint8_t>(k % 2 == 0 ? code : code << 4);
      }
    }
  }
  return q;
}

Int4Parts LayOutInt4(uint8_t* memory, int64_t rows, int64_t cols, int group_size) {
  Int4Parts p;
  const int64_t groups = Groups(cols, group_size);
  p.codes = memory;
  p.scales = reinterpret_cast<float*>(memory + Align64(rows * ((cols + 1) / 2)));
  p.zeros = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(p.scales) + Align64(4 * rows * groups));
  p.view.format = WeightFormat::kInt4;
  p.view.rows = rows;
  p.view.cols = cols;
  p.view.stride = cols + cols % 2;
  p.view.scale_stride = groups;
  p.view.group_size = group_size;
  p.view.codes = p.codes;
  p.view.scales = p.scales;
  p.view.zeros = p.zeros;
  return p;
}

QuantizedMatrix Quantize(const MatrixView& src, int64_t row_begin, int64_t rows, int64_t col_begin, int64_t cols,
                         WeightFormat format, int group_size) {
  QuantizedMatrix q;
  // aligned_alloc wants a whole number of alignments, and an empty matrix still a valid pointer.
  const int64_t bytes = std::max<int64_t>(64, Align64(QuantizedBytes(format, rows, cols, group_size)));
  q.memory.reset(static_cast<uint8_t*>(std::aligned_alloc(64, static_cast<size_t>(bytes))));
  q.view = QuantizeInto(src, row_begin, rows, col_begin, cols, format, group_size, q.memory.get());
  return q;
}

QuantizedMatrix Quantize(const MatrixView& src, WeightFormat format, int group_size) {
  return Quantize(src, 0, src.rows, 0, src.cols, format, group_size);
}

MatrixView DequantizeInto(const MatrixView& m, float* memory) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < m.rows; ++r) DequantizeRow(m, r, memory + r * m.cols);
  MatrixView f;
  f.rows = m.rows;
  f.cols = m.cols;
  f.stride = m.cols;
  f.format = WeightFormat::kF32;
  f.f32 = memory;
  return f;
}

}  // namespace gemma
