#include "shard/model/quantize.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "shard/model/dtype.h"

namespace gemma {
namespace {

struct Bf16Matrix {
  std::vector<uint16_t> bits;
  MatrixView view;
};

Bf16Matrix RandomMatrix(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  Bf16Matrix m;
  m.bits.resize(rows * cols);
  for (auto& b : m.bits) b = F32ToBf16(normal(rng));
  m.view = MatrixView{m.bits.data(), rows, cols, cols};
  return m;
}


TEST(QuantizeTest, Int8IsWithinHalfAStepOfEachWeightAndScalesByTheWholeRow) {
  const auto src = RandomMatrix(6, 96, 1);
  // Columns 32..63 of rows 2..5: the scale still comes from the whole row.
  const QuantizedMatrix mem = Quantize(src.view, 2, 4, 32, 32, WeightFormat::kInt8, 0);
  const MatrixView& q = mem.view;
  ASSERT_EQ(q.format, WeightFormat::kInt8);
  for (int64_t r = 0; r < 4; ++r) {
    float amax = 0;
    for (int64_t k = 0; k < 96; ++k) amax = std::max(amax, std::fabs(ElementAt(src.view, 2 + r, k)));
    EXPECT_FLOAT_EQ(q.scales[r], amax / 127.0f);
    for (int64_t k = 0; k < 32; ++k) {
      EXPECT_LE(std::fabs(ElementAt(q, r, k) - ElementAt(src.view, 2 + r, 32 + k)), q.scales[r] / 2 * 1.0001f);
    }
  }
}

// E4M3 as float8_e4m3fn defines it: code values from the definition, every finite code back to itself, and
// any float to the nearest code (ties to the even code), saturating at 448.
TEST(QuantizeTest, Fp8E4M3DecodesAsDefinedAndEncodesToTheNearestCode) {
  EXPECT_EQ(Fp8E4M3ToF32(0x00), 0.0f);
  EXPECT_EQ(Fp8E4M3ToF32(0x01), std::ldexp(1.0f, -9));  // the smallest subnormal
  EXPECT_EQ(Fp8E4M3ToF32(0x07), 7 * std::ldexp(1.0f, -9));
  EXPECT_EQ(Fp8E4M3ToF32(0x08), std::ldexp(1.0f, -6));  // the smallest normal
  EXPECT_EQ(Fp8E4M3ToF32(0x38), 1.0f);
  EXPECT_EQ(Fp8E4M3ToF32(0x3c), 1.5f);
  EXPECT_EQ(Fp8E4M3ToF32(0x7e), 448.0f);
  EXPECT_EQ(Fp8E4M3ToF32(0xfe), -448.0f);
  EXPECT_TRUE(std::isnan(Fp8E4M3ToF32(0x7f)));
  EXPECT_TRUE(std::isnan(Fp8E4M3ToF32(0xff)));
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;
    EXPECT_EQ(F32ToFp8E4M3(Fp8E4M3ToF32(static_cast<uint8_t>(c))), c) << c;
  }
  EXPECT_EQ(F32ToFp8E4M3(1000.0f), 0x7e);
  EXPECT_EQ(F32ToFp8E4M3(-1e30f), 0xfe);
  EXPECT_EQ(F32ToFp8E4M3(std::nanf("")), 0x7f);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> log2_magnitude(-12.0f, 9.5f);
  for (int i = 0; i < 20000; ++i) {
    const float f = (i % 2 == 0 ? 1.0f : -1.0f) * std::exp2(log2_magnitude(rng));
    // Brute force over the 127 finite codes of f's sign.
    int best = -1;
    double best_err = 1e30;
    for (int c = 0; c < 0x7f; ++c) {
      const int code = c | (f < 0 ? 0x80 : 0);
      const double err = std::fabs(double(Fp8E4M3ToF32(static_cast<uint8_t>(code))) - f);
      if (err < best_err || (err == best_err && code % 2 == 0)) best = code, best_err = err;
    }
    ASSERT_EQ(F32ToFp8E4M3(f), best) << f;
  }
}

TEST(QuantizeTest, Fp8ScalesByTheWholeRowAndRoundsToTheNearestCode) {
  // Magnitudes over 2^-18..2^0 of the row's largest, so that E4M3's subnormals (below 2^-15 of it) occur.
  auto src = RandomMatrix(5, 96, 4);
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> octaves(0.0f, 18.0f);
  for (auto& b : src.bits) b = F32ToBf16(std::copysign(std::exp2(-octaves(rng)), Bf16ToF32(b)));
  const QuantizedMatrix mem = Quantize(src.view, 1, 3, 32, 64, WeightFormat::kFp8, 0);
  const MatrixView& q = mem.view;
  ASSERT_EQ(q.format, WeightFormat::kFp8);
  int subnormals = 0;
  for (int64_t r = 0; r < 3; ++r) {
    float amax = 0;
    for (int64_t k = 0; k < 96; ++k) amax = std::max(amax, std::fabs(ElementAt(src.view, 1 + r, k)));
    EXPECT_FLOAT_EQ(q.scales[r], amax / 448.0f);
    for (int64_t k = 0; k < 64; ++k) {
      const uint8_t code = q.codes[r * q.stride + k];
      EXPECT_EQ(code, F32ToFp8E4M3(ElementAt(src.view, 1 + r, 32 + k) / q.scales[r]));
      EXPECT_FLOAT_EQ(ElementAt(q, r, k), Fp8E4M3ToF32(code) * q.scales[r]);
      subnormals += (code & 0x78) == 0 ? 1 : 0;
    }
  }
  EXPECT_GT(subnormals, 0) << "the rows should reach E4M3's subnormals";
  EXPECT_EQ(RowSlice(q, 1, 2).codes, q.codes + q.stride);
  EXPECT_EQ(StoredBytes(q), 3 * 64 + 3 * 4);
}

TEST(QuantizeTest, Int4GroupsAreWithinHalfAStepAndPackLowNibbleFirst) {
  const auto src = RandomMatrix(3, 128, 2);
  const QuantizedMatrix mem = Quantize(src.view, 0, 3, 0, 128, WeightFormat::kInt4, 32);
  const MatrixView& q = mem.view;
  ASSERT_EQ(q.scale_stride, 4);
  for (int64_t r = 0; r < 3; ++r) {
    for (int64_t k = 0; k < 128; ++k) {
      const int64_t g = r * 4 + k / 32;
      EXPECT_LE(std::fabs(ElementAt(q, r, k) - ElementAt(src.view, r, k)), q.scales[g] / 2 * 1.0001f);
      const int code = k % 2 == 0 ? q.codes[r * 64 + k / 2] & 0xF : q.codes[r * 64 + k / 2] >> 4;
      EXPECT_FLOAT_EQ(ElementAt(q, r, k), (code - q.zeros[g]) * q.scales[g]);
      EXPECT_EQ(q.zeros[g], std::nearbyint(q.zeros[g]));
    }
  }
  // Zero is always representable exactly (the range includes it), so a zero weight stays zero.
  std::vector<uint16_t> zeros(64, 0);
  zeros[5] = F32ToBf16(0.5f);
  const QuantizedMatrix mem2 = Quantize(MatrixView{zeros.data(), 1, 64, 64}, 0, 1, 0, 64, WeightFormat::kInt4, 32);
  const MatrixView& z = mem2.view;
  EXPECT_EQ(ElementAt(z, 0, 0), 0.0f);
  EXPECT_EQ(ElementAt(z, 0, 40), 0.0f);
  EXPECT_FLOAT_EQ(ElementAt(z, 0, 5), 0.5f);
}

TEST(QuantizeTest, SlicesKeepEveryElementAndRefuseToCutAGroup) {
  const auto src = RandomMatrix(4, 128, 3);
  const QuantizedMatrix mem = Quantize(src.view, 0, 4, 0, 128, WeightFormat::kInt4, 32);
  const MatrixView& q = mem.view;
  auto cols = ColSlice(RowSlice(q, 1, 2), 64, 64, "layers.0.mlp.down_proj.weight");
  ASSERT_TRUE(cols.ok()) << cols.status();
  for (int64_t r = 0; r < 2; ++r) {
    for (int64_t k = 0; k < 64; ++k) EXPECT_EQ(ElementAt(*cols, r, k), ElementAt(q, 1 + r, 64 + k));
  }
  auto cut = ColSlice(q, 48, 64, "layers.0.mlp.down_proj.weight");
  ASSERT_FALSE(cut.ok());
  EXPECT_NE(cut.status().message().find("layers.0.mlp.down_proj.weight"), std::string::npos) << cut.status();
  EXPECT_NE(cut.status().message().find("group of 32"), std::string::npos) << cut.status();
  // int8 slices anywhere.
  const QuantizedMatrix mem8 = Quantize(src.view, 0, 4, 0, 128, WeightFormat::kInt8, 0);
  const MatrixView& q8 = mem8.view;
  auto c8 = ColSlice(RowSlice(q8, 3, 1), 7, 9, "x");
  ASSERT_TRUE(c8.ok());
  for (int64_t k = 0; k < 9; ++k) EXPECT_EQ(ElementAt(*c8, 0, k), ElementAt(q8, 3, 7 + k));
  EXPECT_EQ(StoredBytes(q8), 4 * 128 + 4 * 4);
  EXPECT_EQ(StoredBytes(q), 4 * 64 + 4 * 4 * 8);
}

TEST(QuantizeTest, GroupSizeIsTheLargestThatDividesEveryCut) {
  EXPECT_EQ(PickGroupSize(2048, 128, {0}), 128);
  EXPECT_EQ(PickGroupSize(192, 128, {96}), 32);
  EXPECT_EQ(PickGroupSize(192, 128, {0}), 64);
  EXPECT_EQ(PickGroupSize(96, 64, {0}), 32);
  EXPECT_EQ(PickGroupSize(100, 128, {0}), 0);
}

TEST(QuantizeTest, PrecisionNamesParseAndBadOnesNameTheAllowedSet) {
  EXPECT_EQ(*ParseWeightPrecision("int8"), WeightPrecision::kInt8);
  EXPECT_EQ(*ParseWeightPrecision("int4"), WeightPrecision::kInt4);
  EXPECT_EQ(*ParseWeightPrecision("fp8"), WeightPrecision::kFp8);
  EXPECT_EQ(*ParseWeightPrecision("bf16"), WeightPrecision::kBF16);
  auto bad = ParseWeightPrecision("q4_0");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("allowed: bf16, int8, int4, fp8"), std::string::npos);
}

}  // namespace
}  // namespace gemma
