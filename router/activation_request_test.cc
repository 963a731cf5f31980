#include "router/activation_request.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "gtest/gtest.h"

namespace gemma {
namespace {

worker::v1::ModelInfo TwoLayers() {
  worker::v1::ModelInfo m;
  m.set_num_layers(2);
  m.set_hidden_size(4);
  return m;
}

v1::ActivationRequest Residual(int index) {
  v1::ActivationRequest r;
  auto* p = r.add_points();
  p->set_kind(v1::ACTIVATION_KIND_RESIDUAL);
  p->set_index(index);
  return r;
}

TEST(ActivationAskTest, AllResidualComesFirstAndEmptyPositionsMeanEvery) {
  v1::ActivationRequest r;
  r.set_all_residual(true);
  auto* p = r.add_points();
  p->set_kind(v1::ACTIVATION_KIND_MLP_OUTPUT);
  p->set_index(1);
  const auto ask = ActivationAskOf(r, TwoLayers(), 5, 1 << 20);
  ASSERT_TRUE(ask.ok()) << ask.status();
  ASSERT_EQ(ask->points.size(), 4u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(ask->points[i].kind, ActivationKind::kResidual);
    EXPECT_EQ(ask->points[i].index, i);
  }
  EXPECT_EQ(ask->points[3].kind, ActivationKind::kMlpOutput);
  EXPECT_EQ(ask->positions, (std::vector<int32_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(ask->bytes, 4 * 5 * 4 * 4);
}

TEST(ActivationAskTest, TheCapCountsDtypeAndNamesItself) {
  v1::ActivationRequest r = Residual(2);
  r.add_positions(1);
  r.add_positions(3);
  EXPECT_TRUE(ActivationAskOf(r, TwoLayers(), 5, 32).ok());  // 1 x 2 x 4 x 4
  const auto refused = ActivationAskOf(r, TwoLayers(), 5, 31);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("take 32 bytes"), std::string::npos) << refused.status();
  EXPECT_NE(refused.status().message().find("(--max_activation_bytes) is 31"), std::string::npos) << refused.status();
  r.set_dtype(v1::ACTIVATION_DTYPE_BFLOAT16);
  EXPECT_EQ(ActivationAskOf(r, TwoLayers(), 5, 31)->bytes, 16);
}

TEST(ActivationAskTest, NothingAskedIsNothing) {
  const auto ask = ActivationAskOf(v1::ActivationRequest(), TwoLayers(), 5, 0);
  ASSERT_TRUE(ask.ok());
  EXPECT_TRUE(ask->points.empty());
  v1::ActivationRequest positions_only;
  positions_only.add_positions(0);
  EXPECT_EQ(ActivationAskOf(positions_only, TwoLayers(), 5, 0).status().code(), absl::StatusCode::kInvalidArgument);
  v1::ActivationRequest bad_dtype = Residual(0);
  bad_dtype.set_dtype(static_cast<v1::ActivationDtype>(9));
  EXPECT_NE(ActivationAskOf(bad_dtype, TwoLayers(), 5, 1 << 20).status().message().find("activations.dtype is 9"),
            std::string::npos);
}

TEST(ActivationAskTest, EncodesLittleEndianF32AndRoundsBf16ToNearestEven) {
  v1::ActivationRequest r = Residual(1);
  r.add_positions(2);
  auto ask = ActivationAskOf(r, TwoLayers(), 5, 1 << 20);
  ASSERT_TRUE(ask.ok());
  const std::vector<float> values = {1.0f, -2.5f, 1.00390625f, std::numeric_limits<float>::quiet_NaN()};
  v1::Activation a = EncodeActivation(*ask, 0, 4, values);
  EXPECT_EQ(a.kind(), v1::ACTIVATION_KIND_RESIDUAL);
  EXPECT_EQ(a.index(), 1);
  EXPECT_EQ(std::vector<int>(a.shape().begin(), a.shape().end()), (std::vector<int>{1, 4}));
  EXPECT_EQ(std::vector<int>(a.positions().begin(), a.positions().end()), (std::vector<int>{2}));
  ASSERT_EQ(a.data().size(), 16u);
  EXPECT_EQ(std::memcmp(a.data().data(), values.data(), 8), 0);
  ask->dtype = v1::ACTIVATION_DTYPE_BFLOAT16;
  a = EncodeActivation(*ask, 0, 4, values);
  ASSERT_EQ(a.data().size(), 8u);
  uint16_t bits[4];
  std::memcpy(bits, a.data().data(), 8);
  EXPECT_EQ(bits[0], 0x3f80);
  EXPECT_EQ(bits[1], 0xc020);
  EXPECT_EQ(bits[2], 0x3f80);  // 1 + 2^-8 lies halfway: to the even neighbour, 1
  EXPECT_EQ(bits[3] & 0x7f80, 0x7f80);
  EXPECT_NE(bits[3] & 0x007f, 0);  // still NaN
}

}  // namespace
}  // namespace gemma
