#include "worker/step_runner.h"

#include <algorithm>
#include <cstring>

#include "gtest/gtest.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/cpu/cpu_backend.h"
#include "shard/runtime/sampler.h"
#include "shard/runtime/sequence_history.h"
#include "engine/local_executor.h"
#include "engine/run_batch.h"
#include "tests/testdata.h"

namespace gemma {
namespace {

std::unique_ptr<CpuBackend> Tiny() {
  auto ckpt = Checkpoint::Open(testing::GemmaTinyDir() + "/tiny-mha");
  auto w = ModelWeights::Load(std::shared_ptr<const Checkpoint>(std::move(*ckpt)));
  KvCacheOptions kv;
  kv.num_blocks = 32;
  return std::move(*CpuBackend::Create(std::shared_ptr<const ModelWeights>(std::move(*w)), kv));
}

TEST(StepRunnerTest, SeededSamplingMatchesTheLocalEngine) {
  auto backend = Tiny();
  SequenceSpec g;
  g.prompt = {2, 3791, 323};
  g.max_new_tokens = 1;
  g.sampling = {1.0f, 40, 0.9f, 123};
  LocalExecutor executor(backend.get());
  Engine engine(executor.EngineOptionsFor({}), &executor);
  const int expected = (*RunBatch(engine, {g}))[0].tokens[0];
  worker::v1::StepRequest req;
  auto* s = req.add_sequences();
  for (int t : g.prompt) s->add_tokens(t);
  s->add_block_table(0);
  s->set_sample(true);
  s->mutable_sampling()->set_temperature(1.0f);
  s->mutable_sampling()->set_top_k(40);
  s->mutable_sampling()->set_top_p(0.9f);
  s->mutable_sampling()->set_seed(123);
  s->set_top_logprobs(3);
  auto resp = RunStep(*backend, req);
  ASSERT_TRUE(resp.ok()) << resp.status();
  EXPECT_EQ(resp->results(0).token(), expected);
  EXPECT_EQ(resp->results(0).top_logprobs_size(), 3);
  EXPECT_LT(resp->results(0).logprob(), 0.0f);
}

TEST(StepRunnerTest, PenaltiesSteerGreedyAwayFromSeenTokens) {
  auto backend = Tiny();
  worker::v1::StepRequest req;
  auto* s = req.add_sequences();
  for (int t : {2, 3791, 323}) s->add_tokens(t);
  s->add_block_table(0);
  s->set_sample(true);
  auto plain = RunStep(*backend, req);
  ASSERT_TRUE(plain.ok());
  const int greedy = plain->results(0).token();
  // Penalize the greedy choice heavily: another token wins, and its reported log-prob is the model's own.
  s->mutable_sampling()->set_presence_penalty(2.0f);
  s->mutable_sampling()->set_frequency_penalty(2.0f);
  for (int i = 0; i < 50; ++i) s->add_penalty_history(greedy);
  auto penalized = RunStep(*backend, req);
  ASSERT_TRUE(penalized.ok());
  EXPECT_NE(penalized->results(0).token(), greedy);
  EXPECT_LT(penalized->results(0).logprob(), plain->results(0).logprob());
}

// Greedy generation with penalties computed here, the old way: the full history handed to ApplyPenalties at every
// step, on a backend of its own.
std::vector<int32_t> ReferenceGreedy(const std::vector<int32_t>& prompt, const SamplingParams& sampling, int n) {
  auto backend = Tiny();
  const int vocab = backend->config().vocab_size;
  std::vector<int32_t> seq = prompt;
  std::vector<int32_t> blocks;
  for (int b = 0; b < 8; ++b) blocks.push_back(b);
  size_t start = 0;
  for (int i = 0; i < n; ++i) {
    SequenceStep step;
    step.tokens = std::span<const int32_t>(seq).subspan(start);
    step.start_pos = static_cast<int32_t>(start);
    step.block_table = blocks;
    StepLogits logits;
    const absl::Status st = backend->Forward(std::span<const SequenceStep>(&step, 1), &logits);
    EXPECT_TRUE(st.ok()) << st;
    std::vector<float> row(logits.Row(0), logits.Row(0) + vocab);
    ApplyPenalties(sampling, seq, prompt.size(), row.data(), vocab);
    start = seq.size();
    seq.push_back(Argmax(row.data(), vocab));
  }
  return std::vector<int32_t>(seq.begin() + static_cast<std::ptrdiff_t>(prompt.size()), seq.end());
}

SequenceSpec Penalized(std::vector<int32_t> prompt, int n) {
  SequenceSpec g;
  g.prompt = std::move(prompt);
  g.max_new_tokens = n;
  g.sampling.repetition_penalty = 1.6f;
  g.sampling.presence_penalty = 0.4f;
  g.sampling.frequency_penalty = 0.6f;
  return g;
}

// The executor keeps each penalized sequence's history from its rows; generation must be what the full history
// gives, through preemption (recompute), a cached prefix (a first row past position 0) and eviction (resends).
TEST(StepRunnerTest, PenalizedGreedyGenerationMatchesTheFullHistory) {
  const SequenceSpec a = Penalized({2, 3791, 323, 17, 901}, 40);
  const SequenceSpec b = Penalized({2, 651, 1320, 9}, 40);
  const std::vector<int32_t> ref_a = ReferenceGreedy(a.prompt, a.sampling, 40);
  const std::vector<int32_t> ref_b = ReferenceGreedy(b.prompt, b.sampling, 40);
  SequenceSpec plain = a;
  plain.sampling = {};
  ASSERT_NE(ReferenceGreedy(plain.prompt, plain.sampling, 40), ref_a) << "the penalties must change the output";

  for (size_t cap : {SequenceHistory::kDefaultMaxSequences, size_t{1}}) {
    SCOPED_TRACE(cap);
    auto backend = Tiny();
    LocalExecutor executor(backend.get(), cap);
    // 5 blocks of 16 for two sequences of 45 positions (3 blocks each): one is preempted and recomputed from
    // position 0 (no prefix cache), so the rows restate positions the executor holds.
    EngineOptions o = executor.EngineOptionsFor({}, /*prefix_cache=*/false);
    o.num_blocks = 5;
    Engine engine(o, &executor);
    auto done = RunBatch(engine, {a, b});
    ASSERT_TRUE(done.ok()) << done.status();
    EXPECT_EQ((*done)[0].tokens, ref_a);
    EXPECT_EQ((*done)[1].tokens, ref_b);
    EXPECT_GT(engine.scheduler().preemptions(), 0);
    if (cap == 1) {
      EXPECT_GT(engine.history_resends(), 0);  // two sequences, room for one: the other is resent
    } else {
      EXPECT_EQ(engine.history_resends(), 0);
    }
    // With the prefix cache, a prompt run again starts after its cached first block: a first row past position 0.
    Engine cached(executor.EngineOptionsFor({}), &executor);
    const SequenceSpec c = Penalized({2, 3791, 323, 17, 901, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18}, 10);
    ASSERT_TRUE(RunBatch(cached, {c}).ok());
    auto again = RunBatch(cached, {c});
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_GT(cached.scheduler().prefix_hit_tokens(), 0);
    EXPECT_EQ((*again)[0].tokens, ReferenceGreedy(c.prompt, c.sampling, 10));
  }
}

// The worker's side: a decode row brings one token; released sequences are dropped; a row whose history is gone
// is refused before anything runs.
TEST(StepRunnerTest, TheWorkerKeepsPenaltyHistoryBetweenSteps) {
  auto backend = Tiny();
  SequenceHistory history;
  const SequenceSpec a = Penalized({2, 3791, 323, 17, 901}, 6);
  const std::vector<int32_t> ref = ReferenceGreedy(a.prompt, a.sampling, 6);
  std::vector<int32_t> seq = a.prompt;
  size_t start = 0;
  for (int i = 0; i < 6; ++i) {
    worker::v1::StepRequest req;
    auto* s = req.add_sequences();
    s->set_sequence_id(5);
    for (size_t j = start; j < seq.size(); ++j) s->add_tokens(seq[j]);
    s->set_start_pos(static_cast<int32_t>(start));
    s->add_block_table(0);
    s->set_sample(true);
    s->mutable_sampling()->set_repetition_penalty(a.sampling.repetition_penalty);
    s->mutable_sampling()->set_presence_penalty(a.sampling.presence_penalty);
    s->mutable_sampling()->set_frequency_penalty(a.sampling.frequency_penalty);
    s->set_penalty_prompt_len(static_cast<int32_t>(a.prompt.size()));
    auto resp = RunStep(*backend, req, nullptr, &history);
    ASSERT_TRUE(resp.ok()) << resp.status();
    start = seq.size();
    seq.push_back(resp->results(0).token());
  }
  EXPECT_EQ(std::vector<int32_t>(seq.begin() + 5, seq.end()), ref);
  EXPECT_EQ(history.Tokens(5).size(), seq.size() - 1);  // the last token is not computed yet
  worker::v1::StepRequest req;
  req.add_released_sequences(5);
  auto* s = req.add_sequences();
  s->set_sequence_id(5);
  s->add_tokens(seq.back());
  s->set_start_pos(static_cast<int32_t>(seq.size()) - 1);
  s->add_block_table(0);
  s->set_sample(true);
  s->mutable_sampling()->set_frequency_penalty(1.0f);
  auto refused = RunStep(*backend, req, nullptr, &history);
  EXPECT_TRUE(absl::IsFailedPrecondition(refused.status())) << refused.status();
  EXPECT_FALSE(history.Contains(5));
}

TEST(StepRunnerTest, RejectsMalformedRequests) {
  auto backend = Tiny();
  worker::v1::StepRequest req;
  auto* s = req.add_sequences();
  s->add_tokens(2);
  s->add_block_table(0);
  s->add_score_targets(5);
  s->add_score_targets(6);  // two targets for one token
  EXPECT_TRUE(absl::IsInvalidArgument(RunStep(*backend, req).status()));
  s->clear_score_targets();
  s->set_top_logprobs(50);
  EXPECT_TRUE(absl::IsInvalidArgument(RunStep(*backend, req).status()));
  s->set_top_logprobs(0);
  s->set_score_logits(257);
  EXPECT_TRUE(absl::IsInvalidArgument(RunStep(*backend, req).status()));
  s->set_score_logits(-2);
  EXPECT_TRUE(absl::IsInvalidArgument(RunStep(*backend, req).status()));
  s->set_score_logits(0);
  s->set_sample(true);
  s->mutable_sampling()->set_temperature(-1);
  EXPECT_TRUE(absl::IsInvalidArgument(RunStep(*backend, req).status()));
}

TEST(StepRunnerTest, ScoredRowsReturnTheirLogitsAsAsked) {
  auto backend = Tiny();
  worker::v1::StepRequest req;
  auto* s = req.add_sequences();
  for (int t : {2, 651, 1320}) s->add_tokens(t);
  s->add_block_table(0);
  for (int t : {651, 1320, -1}) s->add_score_targets(t);
  s->set_score_logits(-1);
  auto whole = RunStep(*backend, req);
  ASSERT_TRUE(whole.ok()) << whole.status();
  const std::string& rows = whole->results(0).score_logits();
  ASSERT_EQ(rows.size(), 3u * backend->config().vocab_size * sizeof(float));
  std::vector<float> logits(rows.size() / sizeof(float));
  std::memcpy(logits.data(), rows.data(), rows.size());
  s->set_score_logits(4);
  auto top = RunStep(*backend, req);
  ASSERT_TRUE(top.ok()) << top.status();
  ASSERT_EQ(top->results(0).score_top_logits_size(), 3);
  for (int p = 0; p < 3; ++p) {
    const auto& alternatives = top->results(0).score_top_logits(p).alternatives();
    ASSERT_EQ(alternatives.size(), 4);
    const float* row = logits.data() + static_cast<size_t>(p) * backend->config().vocab_size;
    EXPECT_EQ(alternatives[0].logprob(), *std::max_element(row, row + backend->config().vocab_size));
    for (const auto& a : alternatives) EXPECT_EQ(a.logprob(), row[a.token()]);
    for (int j = 1; j < 4; ++j) EXPECT_GE(alternatives[j - 1].logprob(), alternatives[j].logprob());
  }
  EXPECT_TRUE(top->results(0).score_logits().empty());
}

TEST(StepRunnerTest, StepsBeyondTheLimitsAreRefusedBeforeTheyRun) {
  auto backend = Tiny();
  StepLimits limits;
  limits.max_tokens = 4;
  limits.max_sequences = 2;
  limits.max_context = 16;
  limits = limits.Resolved(backend->config());
  worker::v1::StepRequest req;
  auto* s = req.add_sequences();
  for (int t : {2, 3791, 323, 5, 6}) s->add_tokens(t);
  s->add_block_table(0);
  auto refused = RunStep(*backend, req, nullptr, nullptr, &limits);
  EXPECT_TRUE(absl::IsInvalidArgument(refused.status()));
  EXPECT_NE(refused.status().message().find("--max_tokens_per_step"), std::string::npos) << refused.status();
  s->mutable_tokens()->Truncate(4);
  EXPECT_TRUE(RunStep(*backend, req, nullptr, nullptr, &limits).ok());

  // A row that takes its token from the last step counts the one token it does not carry.
  LastDraws draws = {{9, 17}};
  auto* drawn = req.add_sequences();
  drawn->set_sequence_id(9);
  drawn->set_token_from_last_step(true);
  drawn->set_start_pos(4);
  drawn->add_block_table(1);
  refused = RunStep(*backend, req, &draws, nullptr, &limits);
  EXPECT_NE(refused.status().message().find("5 tokens"), std::string::npos) << refused.status();

  req.mutable_sequences()->RemoveLast();
  s->set_start_pos(13);  // positions 13..16: one past the context
  refused = RunStep(*backend, req, nullptr, nullptr, &limits);
  EXPECT_NE(refused.status().message().find("--max_model_len"), std::string::npos) << refused.status();

  s->set_start_pos(0);
  for (int i = 0; i < 2; ++i) *req.add_sequences() = *s;
  refused = RunStep(*backend, req, nullptr, nullptr, &limits);
  EXPECT_NE(refused.status().message().find("--max_batch_size"), std::string::npos) << refused.status();
}

}  // namespace
}  // namespace gemma
