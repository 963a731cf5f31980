#include "shard/model/packed_int4.h"

#include <cmath>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "shard/model/dtype.h"
#include "shard/model/quantize.h"

namespace gemma {
namespace {

uint32_t Word(const StoredTensor& t, int64_t i) {
  uint32_t w;
  std::memcpy(&w, t.data + 4 * i, 4);
  return w;
}

}  // namespace

absl::StatusOr<MatrixView> ReadPackedInt4(const Checkpoint& checkpoint, const std::string& module, int64_t out,
                                          int64_t in, int64_t row_begin, int64_t rows, int64_t col_begin,
                                          int64_t cols, const std::function<uint8_t*(int64_t)>& allocate) {
  const CheckpointQuantization& q = checkpoint.config().quantization;
  const bool gptq = q.method == CheckpointQuantization::Method::kGptq;
  const int64_t group = q.group_size;
  if (out % 8 != 0 || in % 8 != 0 || in % group != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        checkpoint.dir(), ": ", module, " is [", out, ", ", in, "]; packed 4-bit weights need both sizes multiples of 8 "
        "and the input a multiple of the group size ", group));
  }
  if (col_begin % group != 0 || cols % group != 0) {
    const int fits = PickGroupSize(in, static_cast<int>(group), {col_begin, cols});
    return absl::InvalidArgumentError(absl::StrCat(
        module, ": this rank's tensor-parallel slice, input columns [", col_begin, ", ", col_begin + cols,
        "), cuts the checkpoint's 4-bit groups of ", group, " columns",
        fits > 0 ? absl::StrCat("; quantized with gemma quantize --int4-group-size ", fits,
                                " (or smaller, as other matrices need) it would fit this degree")
                 : "; no 4-bit group size of 32 or more fits this degree"));
  }
  const std::vector<int64_t> qweight_shape = gptq ? std::vector<int64_t>{in / 8, out} : std::vector<int64_t>{in, out / 8};
  ASSIGN_OR_RETURN(const StoredTensor qweight, checkpoint.Get(module + ".qweight", qweight_shape, {DType::kI32}));
  ASSIGN_OR_RETURN(const StoredTensor qzeros, checkpoint.Get(module + ".qzeros", {in / group, out / 8}, {DType::kI32}));
  ASSIGN_OR_RETURN(const StoredTensor scales, checkpoint.Get(module + ".scales", {in / group, out}));
  if (gptq && checkpoint.Has(module + ".g_idx")) {
    ASSIGN_OR_RETURN(const StoredTensor g_idx, checkpoint.Get(module + ".g_idx", {in}, {DType::kI32}));
    for (int64_t k = 0; k < in; ++k) {
      if (static_cast<int64_t>(static_cast<int32_t>(Word(g_idx, k))) != k / group) {
        return absl::InvalidArgumentError(absl::StrCat(
            checkpoint.dir(), ": ", module, ".g_idx[", k, "] is ", static_cast<int32_t>(Word(g_idx, k)),
            ", not ", k / group, ": inputs regrouped by act-order are not supported"));
      }
    }
  }
  const int64_t groups = cols / group;
  const Int4Parts parts = LayOutInt4(allocate(QuantizedBytes(WeightFormat::kInt4, rows, cols, static_cast<int>(group))),
                                     rows, cols, static_cast<int>(group));
  uint8_t* codes = parts.codes;
  float* scale_out = parts.scales;
  float* zero_out = parts.zeros;
  const int zero_offset = q.zeros_minus_one ? 1 : 0;
  // A NaN or an infinity among the scales (f16 overflows easily) would make every logit NaN: the first one, by
  // place, is refused.
  int64_t first_bad = -1;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = row_begin + r;
    const int nibble = gptq ? static_cast<int>(n % 8) : kAwqNibbleOfColumn[n % 8];
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t sg = col_begin / group + g;
      const float scale = FloatElementAsF32(scales.dtype, scales.data, sg * out + n);
      if (!std::isfinite(scale)) {
#pragma omp critical(gemma_packed_int4_bad_scale)
        if (first_bad < 0 || sg * out + n < first_bad) first_bad = sg * out + n;
      }
      scale_out[r * groups + g] = scale;
      zero_out[r * groups + g] =
          static_cast<float>(((Word(qzeros, sg * (out / 8) + n / 8) >> (4 * nibble)) & 0xF) + zero_offset);
    }
    uint8_t* row = codes + r * (cols / 2);
    for (int64_t c = 0; c < cols; c += 2) {
      uint32_t pair = 0;
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t k = col_begin + c + j;
        const uint32_t code = gptq ? (Word(qweight, (k / 8) * out + n) >> (4 * (k % 8))) & 0xF
                                   : (Word(qweight, k * (out / 8) + n / 8) >> (4 * nibble)) & 0xF;
        pair |= code << (4 * j);
      }
      row[c / 2] = static_cast<uint8_t>(pair);
    }
  }
  if (first_bad >= 0) {
    return absl::InvalidArgumentError(absl::StrCat(checkpoint.dir(), ": ", module,
                                                   ".scales holds a non-finite value at [", first_bad / out, ", ",
                                                   first_bad % out, "]: the checkpoint is damaged, or was saved "
                                                   "after an overflow"));
  }
  return parts.view;
}

}  // namespace gemma
