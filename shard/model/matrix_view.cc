#include "shard/model/matrix_view.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "shard/model/dtype.h"

namespace gemma {

const char* WeightFormatName(WeightFormat format) {
  switch (format) {
    case WeightFormat::kBF16:
      return "bf16";
    case WeightFormat::kF32:
      return "f32";
    case WeightFormat::kInt8:
      return "int8";
    case WeightFormat::kInt4:
      return "int4";
    case WeightFormat::kFp8:
      return "fp8";
  }
  return "?";
}

MatrixView RowSlice(const MatrixView& m, int64_t begin, int64_t count) {
  MatrixView s = m;
  s.rows = count;
  switch (m.format) {
    case WeightFormat::kBF16:
      s.data = m.data + begin * m.stride;
      break;
    case WeightFormat::kF32:
      s.f32 = m.f32 + begin * m.stride;
      break;
    case WeightFormat::kInt8:
    case WeightFormat::kFp8:
      s.codes = m.codes + begin * m.stride;
      s.scales = m.scales + begin;
      break;
    case WeightFormat::kInt4:
      s.codes = m.codes + begin * (m.stride / 2);
      s.scales = m.scales + begin * m.scale_stride;
      s.zeros = m.zeros + begin * m.scale_stride;
      break;
  }
  return s;
}

absl::StatusOr<MatrixView> ColSlice(const MatrixView& m, int64_t begin, int64_t count, const char* what) {
  MatrixView s = m;
  s.cols = count;
  switch (m.format) {
    case WeightFormat::kBF16:
      s.data = m.data + begin;
      break;
    case WeightFormat::kF32:
      s.f32 = m.f32 + begin;
      break;
    case WeightFormat::kInt8:
    case WeightFormat::kFp8:
      s.codes = m.codes + begin;
      break;
    case WeightFormat::kInt4:
      if (begin % m.group_size != 0 || count % m.group_size != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": the tensor-parallel slice [", begin, ", ", begin + count,
                         ") of its input dimension cuts a 4-bit group of ", m.group_size,
                         " columns; the slice boundaries must be multiples of the group size"));
      }
      s.codes = m.codes + begin / 2;
      s.scales = m.scales + begin / m.group_size;
      s.zeros = m.zeros + begin / m.group_size;
      break;
  }
  return s;
}

int64_t StoredBytes(const MatrixView& m) {
  const int64_t n = m.rows * m.cols;
  switch (m.format) {
    case WeightFormat::kBF16:
      return 2 * n;
    case WeightFormat::kF32:
      return 4 * n;
    case WeightFormat::kInt8:
    case WeightFormat::kFp8:
      return n + 4 * m.rows;
    case WeightFormat::kInt4: {
      const int64_t groups = (m.cols + m.group_size - 1) / m.group_size;
      return n / 2 + 8 * m.rows * groups;
    }
  }
  return 0;
}

float ElementAt(const MatrixView& m, int64_t r, int64_t k) {
  switch (m.format) {
    case WeightFormat::kBF16:
      return Bf16ToF32(m.data[r * m.stride + k]);
    case WeightFormat::kF32:
      return m.f32[r * m.stride + k];
    case WeightFormat::kInt8:
      return static_cast<float>(static_cast<int8_t>(m.codes[r * m.stride + k])) * m.scales[r];
    case WeightFormat::kInt4: {
      const uint8_t byte = m.codes[r * (m.stride / 2) + k / 2];
      const int code = (k % 2 == 0) ? (byte & 0xF) : (byte >> 4);
      const int64_t g = r * m.scale_stride + k / m.group_size;
      return (static_cast<float>(code) - m.zeros[g]) * m.scales[g];
    }
    case WeightFormat::kFp8:
      return Fp8E4M3ToF32(m.codes[r * m.stride + k]) * m.scales[r];
  }
  return 0.0f;
}

void DequantizeRow(const MatrixView& m, int64_t r, float* out) {
  for (int64_t k = 0; k < m.cols; ++k) out[k] = ElementAt(m, r, k);
}

}  // namespace gemma
