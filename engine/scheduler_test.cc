#include "engine/scheduler.h"

#include <algorithm>
#include <map>
#include <set>

#include "gtest/gtest.h"

namespace gemma {
namespace {

std::unique_ptr<ScheduledSequence> Request(uint64_t id, int prompt, int max_new) {
  auto s = std::make_unique<ScheduledSequence>();
  s->id = id;
  for (int i = 0; i < prompt; ++i) s->tokens.push_back(10 + i);
  s->prompt_len = prompt;
  s->spec.max_new_tokens = max_new;
  return s;
}

// Runs steps until every sequence has generated max_new tokens; returns each one's tokens. The "model" emits
// token = position, so a recomputed sequence must produce the same tokens as one never preempted.
// `longest_run`, when given, gets the most positions any one sequence computed in one step.
std::map<uint64_t, std::vector<int32_t>> RunToCompletion(Scheduler& sched, int max_steps = 10000,
                                                         int* longest_run = nullptr) {
  std::map<uint64_t, std::vector<int32_t>> done;
  for (int step = 0; step < max_steps && (sched.running() > 0 || sched.queued() > 0); ++step) {
    auto plan = sched.Schedule();
    EXPECT_FALSE(plan.empty()) << "no progress at step " << step;
    for (const auto& p : plan) {
      if (longest_run != nullptr) *longest_run = std::max(*longest_run, p.count);
    }
    std::vector<uint64_t> finished;
    for (const auto& p : plan) {
      const int32_t token = p.sample ? p.start + p.count : -1;
      sched.Advance(p, token);
      if (p.sequence->generated() >= p.sequence->spec.max_new_tokens) finished.push_back(p.sequence->id);
    }
    for (uint64_t id : finished) {
      auto s = sched.Remove(id);
      done[id] = std::vector<int32_t>(s->tokens.begin() + s->prompt_len, s->tokens.end());
    }
  }
  return done;
}

std::unique_ptr<ScheduledSequence> AdapterRequest(uint64_t id, uint32_t adapter, int prompt, int max_new) {
  auto s = Request(id, prompt, max_new);
  s->spec.adapter = adapter;
  s->spec.cache_salt = adapter;
  return s;
}

// Steps of up to 16 sequences and `budget` tokens, prompts in chunks of 64, at most `cap` adapters.
SchedulerLimits AdapterLimits(int cap, int budget = 512) {
  SchedulerLimits limits{16, budget, 64};
  limits.max_adapters_per_step = cap;
  return limits;
}

std::set<uint32_t> AdaptersOf(const std::vector<PlannedSequence>& plan) {
  std::set<uint32_t> adapters;
  for (const auto& p : plan) {
    if (p.sequence->spec.adapter != 0) adapters.insert(p.sequence->spec.adapter);
  }
  return adapters;
}

// Runs steps as RunToCompletion does, checking that none holds more than `cap` distinct adapters; returns the
// order in which sequences were first planned.
std::vector<uint64_t> RunWithinAdapterCap(Scheduler& sched, int cap, std::map<uint64_t, int>* generated) {
  std::vector<uint64_t> started;
  for (int step = 0; step < 10000 && (sched.running() > 0 || sched.queued() > 0); ++step) {
    auto plan = sched.Schedule();
    EXPECT_FALSE(plan.empty()) << "no progress at step " << step;
    EXPECT_LE(AdaptersOf(plan).size(), static_cast<size_t>(cap)) << "step " << step;
    std::vector<uint64_t> finished;
    for (const auto& p : plan) {
      if (std::find(started.begin(), started.end(), p.sequence->id) == started.end()) started.push_back(p.sequence->id);
      sched.Advance(p, p.sample ? p.start + p.count : -1);
      if (p.sequence->generated() >= p.sequence->spec.max_new_tokens) finished.push_back(p.sequence->id);
    }
    for (uint64_t id : finished) (*generated)[id] = sched.Remove(id)->generated();
  }
  return started;
}

TEST(SchedulerTest, StepsHoldNoMoreAdaptersThanTheLimitAndEverySequenceFinishes) {
  Scheduler sched(AdapterLimits(2, 64), 1000, 16);
  for (uint64_t id = 1; id <= 24; ++id) {
    ASSERT_TRUE(sched.Enqueue(AdapterRequest(id, static_cast<uint32_t>(id % 6), 5 + id % 7, 3 + id % 5)).ok());
  }
  std::map<uint64_t, int> generated;
  RunWithinAdapterCap(sched, 2, &generated);
  ASSERT_EQ(generated.size(), 24u);
  for (const auto& [id, n] : generated) EXPECT_EQ(n, 3 + static_cast<int>(id % 5)) << id;
}

TEST(SchedulerTest, BaseRowsAreNotLimitedByTheAdapterLimit) {
  Scheduler sched(AdapterLimits(1), 1000, 16);
  ASSERT_TRUE(sched.Enqueue(AdapterRequest(1, 7, 4, 4)).ok());
  ASSERT_TRUE(sched.Enqueue(AdapterRequest(2, 8, 4, 4)).ok());
  for (uint64_t id = 3; id <= 6; ++id) ASSERT_TRUE(sched.Enqueue(Request(id, 4, 4)).ok());
  ASSERT_TRUE(sched.Enqueue(AdapterRequest(7, 7, 4, 4)).ok());
  auto plan = sched.Schedule();
  std::set<uint64_t> ids;
  for (const auto& p : plan) ids.insert(p.sequence->id);
  // Adapter 8 waits; the base rows behind it do not, and neither does adapter 7's second row, which is behind the
  // waiting one: once a sequence waits for a place, no adapter sequence passes it.
  EXPECT_EQ(ids, (std::set<uint64_t>{1, 3, 4, 5, 6}));
  EXPECT_EQ(AdaptersOf(plan), std::set<uint32_t>{7});
}

TEST(SchedulerTest, ASequenceWaitingForAnAdapterPlaceIsNotPassedByLaterAdapterOnes) {
  Scheduler sched(AdapterLimits(1), 1000, 16);
  ASSERT_TRUE(sched.Enqueue(AdapterRequest(1, 1, 4, 6)).ok());
  ASSERT_TRUE(sched.Enqueue(AdapterRequest(2, 2, 4, 2)).ok());
  ASSERT_EQ(sched.Schedule().size(), 1u);  // 1 runs (that plan is dropped: it is planned again); 2 waits
  // Requests of the running adapter keep coming: none of them may start before 2.
  for (uint64_t id = 3; id <= 8; ++id) ASSERT_TRUE(sched.Enqueue(AdapterRequest(id, 1, 4, 2)).ok());
  std::map<uint64_t, int> generated;
  const std::vector<uint64_t> started = RunWithinAdapterCap(sched, 1, &generated);
  EXPECT_EQ(generated.size(), 8u);
  ASSERT_FALSE(started.empty());
  EXPECT_EQ(started.front(), 1u);
  ASSERT_GE(started.size(), 2u);
  EXPECT_EQ(started[1], 2u) << "the waiting adapter sequence was passed";
}

TEST(SchedulerTest, RunningSequencesOfMoreAdaptersThanTheLimitTakeTurns) {
  // A fork of another adapter runs beside its parent at once, so two adapters run under a limit of one: their
  // rows go in turns, and both finish.
  Scheduler sched(AdapterLimits(1), 1000, 16);
  ASSERT_TRUE(sched.Enqueue(AdapterRequest(1, 1, 4, 6)).ok());
  auto first = sched.Schedule();
  ASSERT_EQ(first.size(), 1u);
  sched.Advance(first[0], 4);
  auto child = AdapterRequest(2, 2, 4, 6);
  child->tokens = first[0].sequence->tokens;
  sched.Fork(*first[0].sequence, std::move(child));
  ASSERT_EQ(sched.running(), 2);
  std::map<uint64_t, int> generated;
  RunWithinAdapterCap(sched, 1, &generated);
  EXPECT_EQ(generated.size(), 2u);
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

// Four sequences of a 4-token prompt generating `max_new` each in a pool too small for all: some are preempted,
// recomputed, and finish with the same tokens; every block comes back.
void ExpectPreemptedSequencesComplete(Scheduler& sched, int max_new) {
  for (uint64_t id = 1; id <= 4; ++id) ASSERT_TRUE(sched.Enqueue(Request(id, 4, max_new)).ok());
  auto done = RunToCompletion(sched);
  ASSERT_EQ(done.size(), 4u);
  EXPECT_GT(sched.preemptions(), 0);
  for (const auto& [id, tokens] : done) {
    ASSERT_EQ(tokens.size(), static_cast<size_t>(max_new)) << id;
    for (size_t i = 0; i < tokens.size(); ++i) EXPECT_EQ(tokens[i], static_cast<int32_t>(4 + i)) << id;
  }
  EXPECT_EQ(sched.blocks().used_blocks(), 0);
}

TEST(SchedulerTest, PreemptsWhenBlocksRunOutAndLosesNoRequest) {
  // 12 blocks of 4 positions = 48 positions for 4 sequences that each grow to 20: they cannot all fit.
  Scheduler sched({8, 64, 16}, 12, 4);
  ExpectPreemptedSequencesComplete(sched, 16);
}

// A preempted sequence computes its prompt and the tokens it had generated again in runs of at most the prefill
// chunk: the run length the admission bound (BlockManager::MostBlocksHeld) assumes.
TEST(SchedulerTest, RecomputeAfterPreemptionRunsInPrefillChunks) {
  SchedulerLimits limits{8, 64, 16};
  limits.max_prefill_chunk = 4;
  Scheduler sched(limits, 12, 4);
  for (uint64_t id = 1; id <= 4; ++id) ASSERT_TRUE(sched.Enqueue(Request(id, 4, 16)).ok());
  int longest = 0;
  const auto done = RunToCompletion(sched, 10000, &longest);
  EXPECT_EQ(done.size(), 4u);
  EXPECT_GT(sched.preemptions(), 0);
  EXPECT_LE(longest, 4);
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

TEST(SchedulerTest, APreemptedSequenceIsNotReadmittedByTheStepThatPreemptedIt) {
  // Two sequences fill the pool; when the older one needs a block the newer gives way, and the same step must
  // not take it back (it would only evict itself again).
  Scheduler sched({8, 64, 16}, 4, 4);
  ASSERT_TRUE(sched.Enqueue(Request(1, 8, 8)).ok());
  ASSERT_TRUE(sched.Enqueue(Request(2, 8, 8)).ok());
  for (const auto& p : sched.Schedule()) sched.Advance(p, 1);
  ASSERT_EQ(sched.running(), 2);
  auto plan = sched.Schedule();  // sequence 1's decode needs a third block: sequence 2 is preempted
  EXPECT_EQ(sched.preemptions(), 1);
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].sequence->id, 1u);
  EXPECT_EQ(sched.queued(), 1);
  for (const auto& p : plan) sched.Advance(p, 1);
}

TEST(SchedulerTest, AChunkLimitSplitsLongPrompts) {
  SchedulerLimits limits{8, 512, 16};
  limits.max_prefill_chunk = 7;
  Scheduler sched(limits, 100, 16);
  ASSERT_TRUE(sched.Enqueue(Request(1, 20, 2)).ok());
  std::vector<int> counts;
  for (int i = 0; i < 3; ++i) {
    for (const auto& p : sched.Schedule()) {
      counts.push_back(p.count);
      sched.Advance(p, p.sample ? 1 : -1);
    }
  }
  EXPECT_EQ(counts, (std::vector<int>{7, 7, 6}));
}

TEST(SchedulerTest, ASecondRequestStartsAfterTheCachedPrefix) {
  Scheduler sched({8, 512, 16}, 64, 4, /*prefix_cache=*/true);
  auto first = Request(1, 18, 2);  // 4 full blocks and 2 positions
  ASSERT_TRUE(sched.Enqueue(std::move(first)).ok());
  auto done = RunToCompletion(sched);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_GT(sched.blocks().cached_blocks(), 0);
  EXPECT_EQ(sched.blocks().used_blocks(), 0);  // cached blocks held by nobody count as free
  ASSERT_TRUE(sched.Enqueue(Request(2, 18, 2)).ok());
  auto plan = sched.Schedule();
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].start, 16);  // four cached blocks
  EXPECT_EQ(plan[0].count, 2);
  EXPECT_EQ(sched.prefix_hit_tokens(), 16);
  EXPECT_EQ(sched.prefix_query_tokens(), 36);
  // The whole prompt cached: its last position is still computed, for the logits to sample from.
  Scheduler exact({8, 512, 16}, 64, 4, true);
  ASSERT_TRUE(exact.Enqueue(Request(1, 16, 1)).ok());
  RunToCompletion(exact);
  ASSERT_TRUE(exact.Enqueue(Request(2, 16, 1)).ok());
  plan = exact.Schedule();
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].start, 12);
  EXPECT_EQ(plan[0].count, 4);
}

// Samples of one prompt admitted together: the first prefills it, the others wait for its whole blocks and then
// start after them; every sequence's tokens are what it would give alone.
TEST(SchedulerTest, SequencesWaitForTheBlocksAnotherIsPrefilling) {
  Scheduler sched({8, 512, 16, /*max_prefill_chunk=*/8}, 64, 4, /*prefix_cache=*/true);
  for (uint64_t id = 1; id <= 4; ++id) ASSERT_TRUE(sched.Enqueue(Request(id, 18, 2)).ok());
  auto plan = sched.Schedule();
  ASSERT_EQ(plan.size(), 1u) << "the others wait for the blocks the first is computing";
  EXPECT_EQ(plan[0].sequence->id, 1u);
  int computed = 0;
  std::map<uint64_t, int> starts;
  for (int step = 0; step < 20 && (sched.running() > 0 || sched.queued() > 0); ++step) {
    if (step > 0) plan = sched.Schedule();
    for (const auto& p : plan) {
      if (p.sequence->generated() == 0 && !starts.count(p.sequence->id)) starts[p.sequence->id] = p.start;
      if (p.start < p.sequence->prompt_len) computed += std::min(p.count, p.sequence->prompt_len - p.start);
      sched.Advance(p, p.sample ? p.start + p.count : -1);
    }
    std::vector<uint64_t> finished;
    for (const auto& p : plan) {
      if (p.sequence->generated() >= p.sequence->spec.max_new_tokens) finished.push_back(p.sequence->id);
    }
    for (uint64_t id : finished) {
      auto s = sched.Remove(id);
      EXPECT_EQ(std::vector<int32_t>(s->tokens.begin() + s->prompt_len, s->tokens.end()),
                (std::vector<int32_t>{18, 19}))
          << "sequence " << id;
    }
  }
  EXPECT_EQ(sched.running() + sched.queued(), 0);
  for (uint64_t id = 2; id <= 4; ++id) EXPECT_EQ(starts[id], 16) << "sequence " << id << " starts after 4 blocks";
  EXPECT_EQ(computed, 18 + 3 * 2) << "the prompt is prefilled once, then each sample's last positions";
  EXPECT_EQ(sched.prefix_hit_tokens(), 3 * 16);
}

// Only a prompt that shares a whole block with the one being prefilled waits, and it holds nobody back: not one
// sharing only part of a block, one under another cache salt, a scoring request, nor one queued behind it.
TEST(SchedulerTest, OnlySharersWaitAndOthersPassThem) {
  Scheduler sched({8, 512, 16, 8}, 64, 4, true);
  ASSERT_TRUE(sched.Enqueue(Request(1, 18, 2)).ok());
  ASSERT_TRUE(sched.Enqueue(Request(2, 18, 2)).ok());  // shares every block: waits
  auto partial = Request(3, 18, 2);
  for (size_t i = 3; i < partial->tokens.size(); ++i) partial->tokens[i] += 100;  // differs inside block 0
  ASSERT_TRUE(sched.Enqueue(std::move(partial)).ok());
  auto salted = Request(4, 18, 2);
  salted->spec.cache_salt = 7;  // another adapter: never shares KV
  ASSERT_TRUE(sched.Enqueue(std::move(salted)).ok());
  auto score = Request(5, 18, 0);
  score->spec.score = true;
  ASSERT_TRUE(sched.Enqueue(std::move(score)).ok());
  std::set<uint64_t> planned;
  for (const auto& p : sched.Schedule()) planned.insert(p.sequence->id);
  EXPECT_EQ(planned, (std::set<uint64_t>{1, 3, 4, 5}));
  EXPECT_EQ(sched.queued(), 1);
}

// The sequence a waiter waits on goes away (cancelled): the waiter is admitted at once, from the start.
TEST(SchedulerTest, AWaiterWhoseLeaderGoesIsAdmitted) {
  Scheduler sched({8, 512, 16, 8}, 64, 4, true);
  ASSERT_TRUE(sched.Enqueue(Request(1, 18, 2)).ok());
  ASSERT_TRUE(sched.Enqueue(Request(2, 18, 2)).ok());
  for (const auto& p : sched.Schedule()) sched.Advance(p, -1);  // the leader's first 8 positions
  ASSERT_EQ(sched.queued(), 1);
  ASSERT_NE(sched.Remove(1), nullptr);
  auto plan = sched.Schedule();
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].sequence->id, 2u);
  EXPECT_EQ(plan[0].start, 8) << "the two blocks the leader named before it went";
}

TEST(SchedulerTest, ScoringNeverStartsFromTheCache) {
  Scheduler sched({8, 512, 16}, 64, 4, true);
  ASSERT_TRUE(sched.Enqueue(Request(1, 18, 2)).ok());
  RunToCompletion(sched);
  auto score = Request(2, 18, 0);
  score->spec.score = true;
  ASSERT_TRUE(sched.Enqueue(std::move(score)).ok());
  auto plan = sched.Schedule();
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].start, 0);
}

// Local layers that see 8 positions, in two groups of blocks of 4 positions.
TEST(SchedulerTest, AdmissionCountsOnlyTheWindowOfLocalLayers) {
  // 40 + 40 positions: 20 global blocks, and local blocks (two a block index) for at most (8 + 8 + 3) / 4 + 1 = 5
  // block indices and the one kept before the window, not 20.
  const KvWindow window{8, 2};
  EXPECT_TRUE(absl::IsInvalidArgument(Scheduler({4, 8, 8, 8}, 31, 4, false, window).Enqueue(Request(1, 40, 40))));
  Scheduler sched({4, 8, 8, 8}, 32, 4, false, window);
  ASSERT_TRUE(sched.Enqueue(Request(1, 40, 40)).ok());
  int most = 0;
  for (int step = 0; step < 200 && sched.running() + sched.queued() > 0; ++step) {
    auto plan = sched.Schedule();
    ASSERT_EQ(plan.size(), 1u);
    most = std::max(most, sched.blocks().used_blocks());
    sched.Advance(plan[0], plan[0].sample ? 1 : -1);
    if (plan[0].sequence->generated() >= 40) sched.Remove(1);
  }
  EXPECT_EQ(sched.running() + sched.queued(), 0);
  EXPECT_EQ(sched.preemptions(), 0);
  EXPECT_LE(most, 32);
  EXPECT_GT(sched.blocks().window_released_blocks(), 0);
  EXPECT_EQ(sched.blocks().used_blocks(), 0);
}

TEST(SchedulerTest, WindowedSequencesPreemptAndRecomputeGivingEverythingBack) {
  // Four sequences growing to 44 positions each: 11 global blocks and up to 4 local indices of 2 blocks; 40 blocks
  // cannot hold all four, so some are preempted, recomputed, and finish with the same tokens.
  Scheduler sched({8, 64, 16}, 40, 4, /*prefix_cache=*/true, KvWindow{8, 2});
  ExpectPreemptedSequencesComplete(sched, 40);
}

TEST(SchedulerTest, APrefixHitStartsWhereTheWindowsLocalBlocksAreStillCached) {
  Scheduler sched({8, 64, 16}, 64, 4, /*prefix_cache=*/true, KvWindow{8, 1});
  ASSERT_TRUE(sched.Enqueue(Request(1, 30, 1)).ok());
  RunToCompletion(sched);
  // The same prompt again: 7 full blocks of its first 29 tokens are cached, and position 28's window (21..28,
  // indices 5 and 6) too.
  ASSERT_TRUE(sched.Enqueue(Request(2, 30, 1)).ok());
  auto plan = sched.Schedule();
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].start, 28);
  EXPECT_EQ(plan[0].sequence->blocks.local_begin, 5);
  EXPECT_EQ(plan[0].sequence->blocks.global.size(), 8u);
  EXPECT_EQ(plan[0].sequence->blocks.local.size(), 3u);
  sched.Advance(plan[0], 1);
  sched.Remove(2);
  EXPECT_EQ(sched.blocks().used_blocks(), 0);
}

// A forked child takes its parent's global blocks and the local blocks its own window still needs (the parent keeps
// one block index before its window for that); a parent whose window has slid further cannot lend them, and the
// child computes its prompt afresh.
TEST(SchedulerTest, AForkSharesTheLocalBlocksItsWindowNeedsOrStartsAfresh) {
  struct Case {
    int parent_positions, shared_tokens, child_prompt;
    int computed, local_begin;  // the child's; computed 0: afresh
  };
  // Window 8, blocks of 4, one local group.
  for (const Case& c : {// 7 full blocks; the child's next position 28 sees 21..28: indices 5 and 6.
                        Case{30, 30, 31, 28, 5},
                        // A sample of a 32-token prompt: it starts at the parent's last full block, 28, a block
                        // behind the parent (which sees 25..32 from index 6) and its window reaches index 5, the
                        // one the parent keeps before its window.
                        Case{32, 32, 32, 28, 5},
                        // The parent at 40 keeps indices from 7 on: nothing the child's window needs is left.
                        Case{40, 30, 31, 0, 0}}) {
    Scheduler sched({8, 64, 64}, 64, 4, /*prefix_cache=*/false, KvWindow{8, 1});
    ASSERT_TRUE(sched.Enqueue(Request(1, c.parent_positions, 4)).ok());
    auto plan = sched.Schedule();
    ASSERT_EQ(plan.size(), 1u);
    sched.Advance(plan[0], 7);
    ScheduledSequence* parent = sched.Find(1);
    ASSERT_NE(parent, nullptr);
    ASSERT_EQ(parent->computed, c.parent_positions);
    auto child = Request(2, c.child_prompt, 4);
    std::copy(parent->tokens.begin(), parent->tokens.begin() + c.shared_tokens, child->tokens.begin());
    sched.Fork(*parent, std::move(child));
    const ScheduledSequence* forked = sched.Find(2);
    ASSERT_NE(forked, nullptr);
    EXPECT_EQ(forked->computed, c.computed) << c.parent_positions;
    if (c.computed > 0) {
      const size_t full = static_cast<size_t>(c.computed / 4);
      EXPECT_EQ(forked->blocks.global,
                std::vector<int32_t>(parent->blocks.global.begin(), parent->blocks.global.begin() + full));
      EXPECT_EQ(forked->blocks.local_begin, c.local_begin);
      EXPECT_EQ(forked->blocks.local.size(), full - c.local_begin);
    } else {
      EXPECT_TRUE(forked->blocks.empty());
    }
    RunToCompletion(sched);
    EXPECT_EQ(sched.blocks().used_blocks(), 0) << c.parent_positions;
  }
}

}  // namespace
}  // namespace gemma
