#include "shard/runtime/tp_group.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace gemma {
namespace {

TEST(StepCodecTest, RoundTripsAndRejectsMalformedBytes) {
  std::vector<int32_t> t1 = {2, 5, 9}, b1 = {0, 1}, t2 = {7}, b2 = {3}, local2 = {11, 12, 13, 14};
  std::vector<SequenceStep> steps = {{t1, 0, b1, LogitsWanted::kAll}, {t2, 40, b2, LogitsWanted::kLast, local2, 1}};
  const std::string bytes = EncodeStep(steps);
  auto d = DecodeStep(bytes);
  ASSERT_TRUE(d.ok());
  ASSERT_EQ(d->steps.size(), 2u);
  EXPECT_EQ(std::vector<int32_t>(d->steps[0].tokens.begin(), d->steps[0].tokens.end()), t1);
  EXPECT_EQ(d->steps[1].start_pos, 40);
  EXPECT_EQ(d->steps[1].logits, LogitsWanted::kLast);
  // The local layers' table (KV windows) reaches the followers too.
  EXPECT_TRUE(d->steps[0].local_block_table.empty());
  EXPECT_EQ(std::vector<int32_t>(d->steps[1].local_block_table.begin(), d->steps[1].local_block_table.end()), local2);
  EXPECT_EQ(d->steps[1].local_block_begin, 1);
  for (size_t cut = 0; cut < bytes.size(); ++cut) EXPECT_FALSE(DecodeStep(bytes.substr(0, cut)).ok()) << cut;
  EXPECT_FALSE(DecodeStep(bytes + "x").ok());
}

}  // namespace
}  // namespace gemma
