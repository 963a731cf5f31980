#include "router/scheduler.h"

#include <map>

#include "gtest/gtest.h"

namespace gemma {
namespace {

std::unique_ptr<ScheduledSequence> Request(uint64_t id, int prompt, int max_new) {
  auto s = std::make_unique<ScheduledSequence>();
  s->id = id;
  for (int i = 0; i < prompt; ++i) s->tokens.push_back(10 + i);
  s->prompt_len = prompt;
  s->max_new_tokens = max_new;
  return s;
}

// Runs steps until every sequence has generated max_new tokens; returns each one's tokens. The "model" emits
// token = position, so a recomputed sequence must produce the same tokens as one never preempted.
std::map<uint64_t, std::vector<int32_t>> RunToCompletion(Scheduler& sched, int max_steps = 10000) {
  std::map<uint64_t, std::vector<int32_t>> done;
  for (int step = 0; step < max_steps && (sched.running() > 0 || sched.queued() > 0); ++step) {
    auto plan = sched.Schedule();
    EXPECT_FALSE(plan.empty()) << "no progress at step " << step;
    int tokens = 0;
    for (const auto& p : plan) tokens += p.count;
    std::vector<uint64_t> finished;
    for (const auto& p : plan) {
      const int32_t token = p.sample ? p.start + p.count : -1;
      sched.Advance(p, token);
      if (p.sequence->generated() >= p.sequence->max_new_tokens) finished.push_back(p.sequence->id);
    }
    for (uint64_t id : finished) {
      auto s = sched.Remove(id);
      done[id] = std::vector<int32_t>(s->tokens.begin() + s->prompt_len, s->tokens.end());
    }
  }
  return done;
}

TEST(BlockManagerTest, AllocatesAndFrees) {
  BlockManager b(4, 16);
  std::vector<int32_t> t;
  EXPECT_TRUE(b.EnsureCapacity(t, 33));
  EXPECT_EQ(t.size(), 3u);
  EXPECT_FALSE(b.EnsureCapacity(t, 80));  // needs 5 > 4
  EXPECT_EQ(t.size(), 3u);
  b.Free(t);
  EXPECT_EQ(b.free_blocks(), 4);
  EXPECT_TRUE(t.empty());
}

TEST(SchedulerTest, ChunkedPrefillWithinTheTokenBudgetFirstComeFirstServed) {
  Scheduler sched({8, 512, 16}, 1000, 16);
  ASSERT_TRUE(sched.Enqueue(Request(1, 300, 4)).ok());
  ASSERT_TRUE(sched.Enqueue(Request(2, 300, 4)).ok());
  ASSERT_TRUE(sched.Enqueue(Request(3, 10, 4)).ok());
  auto plan = sched.Schedule();
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].count, 300);
  EXPECT_TRUE(plan[0].sample);
  EXPECT_EQ(plan[1].count, 212);  // a chunk: the budget is spent
  EXPECT_FALSE(plan[1].sample);
  for (const auto& p : plan) sched.Advance(p, p.sample ? 1 : -1);
  plan = sched.Schedule();
  ASSERT_EQ(plan.size(), 3u);
  EXPECT_EQ(plan[0].sequence->id, 1u);  // the decode goes first
  EXPECT_EQ(plan[0].count, 1);
  EXPECT_EQ(plan[1].count, 88);         // the rest of the second prompt
  EXPECT_EQ(plan[2].sequence->id, 3u);  // then the queue
}

TEST(SchedulerTest, DecodesAreNeverStalledByALongPrompt) {
  Scheduler sched({8, 64, 16}, 1000, 16);
  ASSERT_TRUE(sched.Enqueue(Request(1, 5, 100)).ok());
  for (const auto& p : sched.Schedule()) sched.Advance(p, 7);
  ASSERT_TRUE(sched.Enqueue(Request(2, 1000, 4)).ok());
  for (int step = 0; step < 10; ++step) {
    auto plan = sched.Schedule();
    ASSERT_GE(plan.size(), 1u);
    EXPECT_EQ(plan[0].sequence->id, 1u) << step;
    EXPECT_EQ(plan[0].count, 1) << step;
    for (const auto& p : plan) sched.Advance(p, p.sample ? 7 : -1);
  }
}

TEST(SchedulerTest, PreemptsWhenBlocksRunOutAndLosesNoRequest) {
  // 12 blocks of 4 positions = 48 positions for 4 sequences that each grow to 20: they cannot all fit.
  Scheduler sched({8, 64, 16}, 12, 4);
  for (uint64_t id = 1; id <= 4; ++id) ASSERT_TRUE(sched.Enqueue(Request(id, 4, 16)).ok());
  auto done = RunToCompletion(sched);
  ASSERT_EQ(done.size(), 4u);
  EXPECT_GT(sched.preemptions(), 0);
  for (const auto& [id, tokens] : done) {
    ASSERT_EQ(tokens.size(), 16u) << id;
    for (size_t i = 0; i < tokens.size(); ++i) EXPECT_EQ(tokens[i], static_cast<int32_t>(4 + i)) << id;
  }
  EXPECT_EQ(sched.blocks().used_blocks(), 0);
}

TEST(SchedulerTest, ManyMixedRequestsAllComplete) {
  Scheduler sched({16, 128, 200}, 64, 16);
  for (uint64_t id = 1; id <= 64; ++id) ASSERT_TRUE(sched.Enqueue(Request(id, 1 + (id * 37) % 200, 1 + id % 30)).ok());
  auto done = RunToCompletion(sched);
  EXPECT_EQ(done.size(), 64u);
  EXPECT_EQ(sched.blocks().used_blocks(), 0);
}

TEST(SchedulerTest, LimitsAndRemoval) {
  Scheduler sched({8, 64, 2}, 8, 16);
  ASSERT_TRUE(sched.Enqueue(Request(1, 10, 10)).ok());
  ASSERT_TRUE(sched.Enqueue(Request(2, 10, 10)).ok());
  EXPECT_TRUE(absl::IsResourceExhausted(sched.Enqueue(Request(3, 10, 10))));
  EXPECT_TRUE(absl::IsInvalidArgument(Scheduler({8, 64, 2}, 8, 16).Enqueue(Request(4, 100, 100))));
  sched.Schedule();
  EXPECT_GT(sched.blocks().used_blocks(), 0);
  EXPECT_NE(sched.Remove(1), nullptr);  // cancelled: its blocks come back
  EXPECT_NE(sched.Remove(2), nullptr);
  EXPECT_EQ(sched.Remove(2), nullptr);
  EXPECT_EQ(sched.blocks().used_blocks(), 0);
}

}  // namespace
}  // namespace gemma
