#include "engine/activation_collector.h"

#include <vector>

#include "gtest/gtest.h"

namespace gemma {
namespace {

// A row of `rows` positions starting at value `first`, for two points of width 2 (point j adds 100 * j).
RowResult Row(int rows, float first) {
  RowResult r;
  r.activation_rows = rows;
  r.activations.resize(2);
  for (int j = 0; j < 2; ++j) {
    for (int p = 0; p < rows; ++p) {
      r.activations[j].push_back(100.0f * j + first + p);
      r.activations[j].push_back(-(100.0f * j + first + p));
    }
  }
  return r;
}

TEST(ActivationCollectorTest, ChunksArriveInOrder) {
  ActivationCollector c(2, 3);
  ASSERT_TRUE(c.Add(Row(2, 0)).ok());
  ASSERT_TRUE(c.Add(RowResult{}).ok());  // a chunk with no asked position
  ASSERT_TRUE(c.Add(Row(1, 2)).ok());
  EXPECT_TRUE(c.complete());
  EXPECT_EQ(c.hidden(), 2u);
  const auto got = c.Take();
  EXPECT_EQ(got[0], (std::vector<float>{0, -0, 1, -1, 2, -2}));
  EXPECT_EQ(got[1], (std::vector<float>{100, -100, 101, -101, 102, -102}));
}

TEST(ActivationCollectorTest, ALaterPassOverwritesAPreemptedOne) {
  ActivationCollector c(2, 3);
  ASSERT_TRUE(c.Add(Row(2, 10)).ok());  // preempted after two positions: computed again from position 0
  ASSERT_TRUE(c.Add(Row(1, 0)).ok());
  ASSERT_TRUE(c.Add(Row(2, 1)).ok());
  const auto got = c.Take();
  EXPECT_EQ(got[0], (std::vector<float>{0, -0, 1, -1, 2, -2}));
  EXPECT_EQ(got[1], (std::vector<float>{100, -100, 101, -101, 102, -102}));
}

TEST(ActivationCollectorTest, ResetForgetsAndMismatchesAreInternal) {
  ActivationCollector c(2, 3);
  ASSERT_TRUE(c.Add(Row(2, 10)).ok());
  c.Reset();
  EXPECT_FALSE(c.complete());
  ASSERT_TRUE(c.Add(Row(3, 0)).ok());
  EXPECT_EQ(c.Take()[0], (std::vector<float>{0, -0, 1, -1, 2, -2}));
  RowResult one_point = Row(1, 0);
  one_point.activations.pop_back();
  EXPECT_EQ(c.Add(one_point).code(), absl::StatusCode::kInternal);
  RowResult ragged = Row(2, 0);
  ragged.activations[1].pop_back();
  EXPECT_EQ(c.Add(ragged).code(), absl::StatusCode::kInternal);
  // More rows than positions asked would wrap onto themselves.
  EXPECT_EQ(c.Add(Row(4, 0)).code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace gemma
