// The engine against Google's reference outputs: scores and greedy generations of every tiny checkpoint. (Each
// backend's logits against the reference are in shard/conformance/backend_conformance_test.cc.)
#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/runtime/backend.h"
#include "tests/reference_helpers.h"
#include "tests/testdata.h"

namespace gemma::testing {

namespace {

class ReferenceTest : public TinyCheckpointTest {};

TEST_P(ReferenceTest, PromptLogProbsMatchWithinTheModelsTolerance) {
  auto backend = OpenBackend(ModelDir());
  const auto scores = ReadJson(RefDir() + "/scores.json");
  for (const auto& p : scores["prompts"]) {
    SequenceSpec spec;
    spec.prompt = p["ids"].get<std::vector<int32_t>>();
    spec.score = true;
    const auto result = RunOnEngine(backend.get(), {spec});
    const auto ref = p["token_logprobs"].get<std::vector<double>>();
    const auto& got = result[0].prompt_logprobs;
    ASSERT_EQ(got.size(), ref.size());
    double worst = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      EXPECT_NEAR(got[i], ref[i], GetParam().tolerance) << p["prompt"] << " token " << i + 1;
      worst = std::max(worst, std::abs(got[i] - ref[i]));
    }
    RecordProperty("max_abs_logprob_diff_" + p["prompt"].get<std::string>(), absl::StrCat(worst));
  }
}

TEST_P(ReferenceTest, GreedyGenerationsMatchUpToFirstNearTie) {
  auto backend = OpenBackend(ModelDir());
  for (const ReferenceGeneration& g : ReferenceGenerations(RefDir())) {
    const auto got = Greedy(backend.get(), {g.prompt}, static_cast<int>(g.tokens.size()))[0];
    ASSERT_EQ(got.size(), g.tokens.size());
    for (size_t i = 0; i < g.compare; ++i) ASSERT_EQ(got[i], g.tokens[i]) << g.prompt_name << " step " << i;
  }
}

// The KV-cache decode path against the reference's own decode steps, teacher-forced with the reference tokens so a
// near-tie cannot make the runs part: at every step, past the sliding window, the top-5 logits and the logsumexp.
TEST_P(ReferenceTest, DecodeStepLogitsMatchTheReferenceGenerations) {
  auto backend = OpenBackend(ModelDir());
  const auto gens = ReadJson(RefDir() + "/generations.json");
  const double tolerance = GetParam().tolerance;
  int32_t first_block = 0;
  double worst = 0;
  for (const auto& g : gens["results"]) {
    const auto prompt = g["prompt_ids"].get<std::vector<int32_t>>();
    const auto generated = g["generated_ids"].get<std::vector<int32_t>>();
    const int blocks_needed = static_cast<int>((prompt.size() + generated.size()) / backend->kv_block_size()) + 1;
    std::vector<int32_t> blocks(blocks_needed);
    for (int i = 0; i < blocks_needed; ++i) blocks[i] = first_block + i;
    first_block += blocks_needed;
    StepLogits out;
    SequenceStep step{prompt, 0, blocks, LogitsWanted::kLast};
    ASSERT_TRUE(backend->Forward({&step, 1}, &out).ok());
    for (size_t i = 0; i < generated.size(); ++i) {
      const auto& want = g["steps"][i];
      const float* row = out.Row(0);
      const auto ids = want["top5_ids"].get<std::vector<int>>();
      const auto logits = want["top5_logits"].get<std::vector<double>>();
      for (size_t k = 0; k < ids.size(); ++k) {
        EXPECT_NEAR(row[ids[k]], logits[k], tolerance) << g["prompt"] << " step " << i << " top " << k;
        worst = std::max(worst, std::abs(row[ids[k]] - logits[k]));
      }
      const double m = *std::max_element(row, row + out.vocab_size);
      double sum = 0;
      for (int v = 0; v < out.vocab_size; ++v) sum += std::exp(row[v] - m);
      EXPECT_NEAR(m + std::log(sum), want["logsumexp"].get<double>(), tolerance) << g["prompt"] << " step " << i;
      const int32_t token = generated[i];
      SequenceStep decode{{&token, 1}, static_cast<int32_t>(prompt.size() + i), blocks, LogitsWanted::kLast};
      ASSERT_TRUE(backend->Forward({&decode, 1}, &out).ok());
    }
  }
  RecordProperty("max_abs_top5_logit_diff", absl::StrCat(worst));
}

INSTANTIATE_TEST_SUITE_P(TinyCheckpoints, ReferenceTest, ::testing::ValuesIn(TinyModels()), TinyModelName);
INSTANTIATE_TEST_SUITE_P(Gemma23Checkpoints, ReferenceTest, ::testing::ValuesIn(Gemma23TinyModels()), TinyModelName);

}  // namespace
}  // namespace gemma::testing
