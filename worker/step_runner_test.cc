#include "worker/step_runner.h"

#include "gtest/gtest.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/cpu/cpu_backend.h"
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
  s->set_sample(true);
  s->mutable_sampling()->set_temperature(-1);
  EXPECT_TRUE(absl::IsInvalidArgument(RunStep(*backend, req).status()));
}

}  // namespace
}  // namespace gemma
