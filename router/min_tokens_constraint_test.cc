#include "router/min_tokens_constraint.h"

#include "gtest/gtest.h"

namespace gemma {
namespace {

bool Allowed(const std::vector<uint32_t>& mask, int32_t id) { return (mask[id / 32] >> (id % 32)) & 1u; }

TEST(MinTokensConstraintTest, MasksTheStopsUntilTheMinimumThenConstrainsNothing) {
  EXPECT_EQ(MinTokens({1}, 0, 100), nullptr) << "min_tokens 0 holds nothing back";
  auto c = MinTokens({1, 64, 99}, 2, 100);
  ASSERT_NE(c, nullptr);
  const std::vector<uint32_t>& mask = c->Allowed();
  ASSERT_EQ(mask.size(), 4u);
  for (int32_t id = 0; id < 128; ++id) {
    EXPECT_EQ(Allowed(mask, id), id < 100 && id != 1 && id != 64 && id != 99) << id;
  }
  EXPECT_TRUE(c->Constrains());
  EXPECT_FALSE(c->Accept(64).ok()) << "a masked stop cannot have been drawn";
  EXPECT_TRUE(c->Accept(5).ok());
  EXPECT_TRUE(c->Constrains());
  EXPECT_TRUE(c->Accept(6).ok());
  EXPECT_FALSE(c->Constrains()) << "two tokens generated: any may come next";
}

}  // namespace
}  // namespace gemma
