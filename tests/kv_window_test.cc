// KV windows on the tiny Gemma 2/3 checkpoints (sliding window 16): long prompts and generations run in a pool that
// holds only the local layers' windows, match Google's references and the cache that keeps every position, and the
// blocks held stay within the block manager's bound while the window moves on.
#include <algorithm>
#include <cmath>

#include "engine/engine.h"
#include "engine/local_executor.h"
#include "gtest/gtest.h"
#include "tests/reference_helpers.h"
#include "tests/testdata.h"

namespace gemma::testing {
namespace {

struct CountedRun {
  std::vector<CompletedSequence> results;
  int most_blocks = 0;  // blocks held after any step
  int64_t window_released = 0;
  int64_t preemptions = 0;
  int64_t prefilled = 0;
};

// Runs the specs to completion on one engine over `backend`, watching the blocks its scheduler holds.
CountedRun RunCounting(Backend* backend, const std::vector<SequenceSpec>& specs, StepBudget budget,
                       bool prefix_cache) {
  LocalExecutor executor(backend);
  SchedulerLimits limits;
  limits.max_tokens_per_step = budget.max_tokens_per_step;
  limits.max_prefill_chunk = budget.prefill_chunk;
  Engine engine(executor.EngineOptionsFor(limits, prefix_cache), &executor);
  CountedRun run;
  run.results.resize(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) EXPECT_TRUE(engine.Add(i, specs[i]).ok());
  for (int step = 0; step < 10000 && !engine.idle(); ++step) {
    const absl::Status s = engine.Step([&](const SequenceUpdate& u) {
      CompletedSequence& r = run.results[u.id];
      if (u.result != nullptr && u.result->sampled) {
        r.tokens.push_back(u.result->token);
        r.token_logprobs.push_back(u.result->logprob);
      }
      r.prompt_logprobs.insert(r.prompt_logprobs.end(), u.scores.begin(), u.scores.end());
      EXPECT_TRUE(u.error.ok()) << u.error;
      return false;
    });
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) break;
    run.most_blocks = std::max(run.most_blocks, engine.scheduler().blocks().used_blocks());
  }
  EXPECT_TRUE(engine.idle());
  EXPECT_EQ(engine.scheduler().blocks().used_blocks(), 0);
  run.window_released = engine.scheduler().blocks().window_released_blocks();
  run.preemptions = engine.scheduler().preemptions();
  run.prefilled = engine.prefilled_tokens();
  return run;
}

class KvWindowTest : public TinyCheckpointTest {
 protected:
  // A windowed backend whose pool holds exactly what one sequence of `positions` needs in runs of `chunk`.
  std::unique_ptr<CpuBackend> TightBackend(int64_t positions, int chunk, int sequences = 1) {
    auto probe = OpenBackend(ModelDir(), 16, /*windowed=*/true);
    const KvWindow w = probe->kv_window();
    EXPECT_TRUE(w.enabled());
    EXPECT_EQ(w.window, 16);
    bound_ = BlockManager(0, probe->kv_block_size(), false, w).MostBlocksHeld(positions, chunk);
    // What the same positions take when every local layer keeps every position.
    every_position_ = BlockManager(0, probe->kv_block_size()).BlocksFor(positions) * (1 + w.local_groups);
    return OpenBackend(ModelDir(), static_cast<int>(bound_ * sequences * probe->kv_block_size()), true);
  }
  int64_t bound_ = 0, every_position_ = 0;
};

TEST_P(KvWindowTest, LongPromptScoresMatchTheReferenceWithOnlyTheWindowHeld) {
  const auto scores = ReadJson(RefDir() + "/scores.json");
  const auto& p = scores["prompts"][2];  // rand200: crosses the window a dozen times
  SequenceSpec spec;
  spec.prompt = p["ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(spec.prompt.size(), 200u);
  spec.score = true;
  auto backend = TightBackend(200, 24);
  const CountedRun run = RunCounting(backend.get(), {spec}, {24, 24}, false);
  const auto ref = p["token_logprobs"].get<std::vector<double>>();
  const auto& got = run.results[0].prompt_logprobs;
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(got[i], ref[i], GetParam().tolerance) << "token " << i + 1;
  EXPECT_EQ(run.preemptions, 0);
  EXPECT_LE(run.most_blocks, bound_);
  EXPECT_LT(run.most_blocks, every_position_);
  EXPECT_GT(run.window_released, 0);
}

TEST_P(KvWindowTest, GreedyGenerationsMatchTheReferenceAcrossTheWindow) {
  for (const ReferenceGeneration& g : ReferenceGenerations(RefDir())) {
    SequenceSpec spec;
    spec.prompt = g.prompt;
    spec.max_new_tokens = static_cast<int32_t>(g.tokens.size());
    auto backend = TightBackend(static_cast<int64_t>(g.prompt.size() + g.tokens.size()), 8);
    const CountedRun run = RunCounting(backend.get(), {spec}, {8, 8}, false);
    const auto& got = run.results[0].tokens;
    ASSERT_EQ(got.size(), g.tokens.size());
    for (size_t i = 0; i < g.compare; ++i) ASSERT_EQ(got[i], g.tokens[i]) << g.prompt_name << " step " << i;
    EXPECT_EQ(run.preemptions, 0);
    EXPECT_LE(run.most_blocks, bound_);
  }
}

// A long prompt then a long generation: the same tokens and log-probs, bit for bit, as the cache that keeps every
// position (the same keys in the same order); two requests for it share its cached prefix, local blocks included.
TEST_P(KvWindowTest, LongPromptAndGenerationEqualTheCacheThatKeepsEveryPosition) {
  const auto scores = ReadJson(RefDir() + "/scores.json");
  SequenceSpec spec;
  spec.prompt = scores["prompts"][2]["ids"].get<std::vector<int32_t>>();
  spec.max_new_tokens = 120;
  const StepBudget budget{32, 32};
  auto full = OpenBackend(ModelDir());
  ASSERT_FALSE(full->kv_window().enabled());
  const CountedRun want = RunCounting(full.get(), {spec}, budget, false);
  ASSERT_EQ(want.results[0].tokens.size(), 120u);

  auto tight = TightBackend(320, 32);
  const CountedRun got = RunCounting(tight.get(), {spec}, budget, false);
  EXPECT_EQ(got.results[0].tokens, want.results[0].tokens);
  EXPECT_EQ(got.results[0].token_logprobs, want.results[0].token_logprobs);
  EXPECT_EQ(got.preemptions, 0);
  EXPECT_LE(got.most_blocks, bound_);
  EXPECT_LT(got.most_blocks, every_position_);

  // Twice, with the prefix cache: the second request starts after the first one's blocks.
  auto shared = TightBackend(320, 32, 2);
  const CountedRun twice = RunCounting(shared.get(), {spec, spec}, budget, true);
  for (const auto& r : twice.results) {
    EXPECT_EQ(r.tokens, want.results[0].tokens);
    EXPECT_EQ(r.token_logprobs, want.results[0].token_logprobs);
  }
  EXPECT_LT(twice.prefilled, 2 * 200);
}

// A row whose local table misses what its window or its positions need is refused before anything runs.
TEST_P(KvWindowTest, ABackendRefusesALocalTableThatMissesTheWindow) {
  auto backend = OpenBackend(ModelDir(), 1024, /*windowed=*/true);
  const int groups = backend->kv_window().local_groups;
  const std::vector<int32_t> tokens(8, 2), global = {0, 1, 2};
  std::vector<int32_t> local(static_cast<size_t>(3 * groups));
  for (size_t i = 0; i < local.size(); ++i) local[i] = static_cast<int32_t>(3 + i);
  StepLogits out;
  // Positions 32..39: the window reaches back to 17, block index 1.
  SequenceStep ok{tokens, 32, global, LogitsWanted::kLast, std::span<const int32_t>(local).subspan(groups), 1};
  EXPECT_TRUE(backend->Forward({&ok, 1}, &out).ok());
  SequenceStep late = ok;
  late.local_block_begin = 2;
  late.local_block_table = std::span<const int32_t>(local).subspan(2 * groups);
  EXPECT_TRUE(absl::IsInvalidArgument(backend->Forward({&late, 1}, &out)));
  SequenceStep shorter = ok;
  shorter.local_block_table = std::span<const int32_t>(local).subspan(groups, groups);
  EXPECT_TRUE(absl::IsInvalidArgument(backend->Forward({&shorter, 1}, &out)));
  SequenceStep missing = ok;
  missing.local_block_table = {};
  EXPECT_TRUE(absl::IsInvalidArgument(backend->Forward({&missing, 1}, &out)));
  // Without windows a local table is a mistake.
  auto full = OpenBackend(ModelDir(), 1024);
  EXPECT_TRUE(absl::IsInvalidArgument(full->Forward({&ok, 1}, &out)));
}

INSTANTIATE_TEST_SUITE_P(Gemma23Checkpoints, KvWindowTest, ::testing::ValuesIn(Gemma23TinyModels()), TinyModelName);

}  // namespace
}  // namespace gemma::testing
