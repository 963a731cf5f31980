#include "shard/runtime/sequence_history.h"

#include <vector>

#include "gtest/gtest.h"

namespace gemma {
namespace {

using Tokens = std::vector<int32_t>;

Tokens Held(const SequenceHistory& h, uint64_t id) {
  const auto t = h.Tokens(id);
  return Tokens(t.begin(), t.end());
}

TEST(SequenceHistoryTest, AppendsRowsInPositionOrder) {
  SequenceHistory h;
  ASSERT_TRUE(h.Record(1, 0, Tokens{2, 10, 11}, {}).ok());  // the prompt
  ASSERT_TRUE(h.Record(1, 3, Tokens{20}, {}).ok());         // decodes
  ASSERT_TRUE(h.Record(1, 4, Tokens{21}, {}).ok());
  EXPECT_EQ(Held(h, 1), (Tokens{2, 10, 11, 20, 21}));
  EXPECT_TRUE(h.Tokens(2).empty());
}

TEST(SequenceHistoryTest, ARecomputedSequenceIsTruncatedFirst) {
  SequenceHistory h;
  ASSERT_TRUE(h.Record(1, 0, Tokens{2, 10, 11, 20, 21, 22}, {}).ok());
  // Preempted, then recomputed from a cached prefix of 2 positions: the row restates positions 2..5.
  ASSERT_TRUE(h.Record(1, 2, Tokens{11, 20, 21, 22}, {}).ok());
  EXPECT_EQ(Held(h, 1), (Tokens{2, 10, 11, 20, 21, 22}));
  // Or from the start.
  ASSERT_TRUE(h.Record(1, 0, Tokens{2, 10}, {}).ok());
  EXPECT_EQ(Held(h, 1), (Tokens{2, 10}));
}

TEST(SequenceHistoryTest, AGapIsRefusedUnlessTheFullHistoryComes) {
  SequenceHistory h;
  // A first row past position 0 (a cached prefix, or an evicted sequence): the store cannot know the tokens before.
  const absl::Status s = h.Record(7, 4, Tokens{30}, {});
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_NE(s.message().find("sequence 7"), std::string::npos) << s;
  EXPECT_FALSE(h.Contains(7));
  ASSERT_TRUE(h.Record(7, 4, Tokens{30}, Tokens{2, 3, 4, 5, 30}).ok());
  EXPECT_EQ(Held(h, 7), (Tokens{2, 3, 4, 5, 30}));
  EXPECT_TRUE(absl::IsFailedPrecondition(h.Record(7, 9, Tokens{31}, {})));
  EXPECT_EQ(Held(h, 7), (Tokens{2, 3, 4, 5, 30}));  // a refused row changes nothing
}

TEST(SequenceHistoryTest, ReleaseForgetsASequence) {
  SequenceHistory h;
  ASSERT_TRUE(h.Record(1, 0, Tokens{2, 3}, {}).ok());
  ASSERT_TRUE(h.Record(2, 0, Tokens{2, 4}, {}).ok());
  h.Release(1);
  h.Release(99);  // unknown: ignored
  EXPECT_FALSE(h.Contains(1));
  EXPECT_EQ(h.size(), 1u);
  EXPECT_TRUE(absl::IsFailedPrecondition(h.Record(1, 2, Tokens{5}, {})));
}

TEST(SequenceHistoryTest, EvictsTheLeastRecentlyRecordedBeyondItsCap) {
  SequenceHistory h(2);
  ASSERT_TRUE(h.Record(1, 0, Tokens{1}, {}).ok());
  ASSERT_TRUE(h.Record(2, 0, Tokens{2}, {}).ok());
  ASSERT_TRUE(h.Record(3, 0, Tokens{3}, {}).ok());
  EXPECT_EQ(h.size(), 3u);  // nothing is dropped within a step
  ASSERT_TRUE(h.Record(1, 1, Tokens{11}, {}).ok());  // 1 is now the most recent
  h.EvictBeyondCap();
  EXPECT_EQ(h.size(), 2u);
  EXPECT_FALSE(h.Contains(2));
  EXPECT_TRUE(h.Contains(1));
  EXPECT_TRUE(h.Contains(3));
  // The evicted sequence's next row is refused until its history comes again.
  EXPECT_TRUE(absl::IsFailedPrecondition(h.Record(2, 1, Tokens{22}, {})));
  ASSERT_TRUE(h.Record(2, 1, Tokens{22}, Tokens{2, 22}).ok());
  EXPECT_EQ(Held(h, 2), (Tokens{2, 22}));
}

}  // namespace
}  // namespace gemma
