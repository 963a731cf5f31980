#include "router/activation_budget.h"

#include <vector>

#include "gtest/gtest.h"

namespace gemma {
namespace {

TEST(ActivationBudgetTest, ReservesWithinTheCapacityAndReleasesWithTheLease) {
  std::vector<int64_t> heard;
  ActivationBudget budget(100, [&](int64_t bytes) { heard.push_back(bytes); });
  auto a = budget.Reserve(60);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ((*a)->bytes(), 60);
  auto refused = budget.Reserve(41);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("--max_activation_bytes_in_flight"), std::string::npos)
      << refused.status();
  EXPECT_NE(refused.status().message().find("holds 60 bytes"), std::string::npos) << refused.status();
  auto b = budget.Reserve(40);
  ASSERT_TRUE(b.ok()) << "exactly full is within it";
  EXPECT_EQ(budget.in_flight(), 100);
  EXPECT_TRUE(budget.Reserve(0).ok()) << "a request without activations never waits on others'";
  a->reset();
  EXPECT_EQ(budget.in_flight(), 40);
  EXPECT_TRUE(budget.Reserve(41).ok()) << "released bytes are room again";
  EXPECT_EQ(budget.in_flight(), 40) << "the lease of 41 was dropped at once";
  b->reset();
  EXPECT_EQ(budget.in_flight(), 0);
  EXPECT_EQ(heard, (std::vector<int64_t>{60, 100, 40, 81, 40, 0}));
}

TEST(ActivationBudgetTest, TheFlagDefaultsToAMultipleOfThePerRequestCapAndIsNeverBelowIt) {
  EXPECT_EQ(*ResolveActivationBytesInFlight(0, 256), 4 * 256);
  EXPECT_EQ(*ResolveActivationBytesInFlight(256, 256), 256);
  const auto low = ResolveActivationBytesInFlight(255, 256);
  ASSERT_EQ(low.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(low.status().message().find("--max_activation_bytes_in_flight is 255; allowed: 0"), std::string::npos)
      << low.status();
  EXPECT_FALSE(ResolveActivationBytesInFlight(-1, 0).ok());
  EXPECT_FALSE(ResolveActivationBytesInFlight((int64_t{1} << 40) + 1, 256).ok());
}

}  // namespace
}  // namespace gemma
