// The engine against Google's reference outputs: logits, scores and greedy generations of every tiny checkpoint.
#include <cmath>

#include "gtest/gtest.h"
#include "shard/checkpoint/checkpoint.h"
#include "tests/reference_helpers.h"
#include "tests/testdata.h"

namespace gemma::testing {

namespace {

class ReferenceTest : public ::testing::TestWithParam<TinyModel> {
 protected:
  std::string ModelDir() const { return GemmaTinyDir() + "/" + GetParam().name; }
  std::string RefDir() const { return GemmaTinyDir() + "/reference/" + GetParam().reference; }
};

TEST_P(ReferenceTest, FullSequenceLogitsMatchWithin1e4) {
  auto backend = OpenBackend(ModelDir());
  for (const char* prompt : {"fox", "rand37", "rand200"}) {
    const auto meta = ReadJson(RefDir() + "/logits_" + prompt + ".json");
    const std::vector<int32_t> ids = meta["ids"].get<std::vector<int32_t>>();
    const std::vector<float> ref = ReadF32(RefDir() + "/logits_" + prompt + ".f32.bin");
    const int vocab = backend->config().vocab_size;
    ASSERT_EQ(ref.size(), ids.size() * vocab) << prompt;
    std::vector<int32_t> blocks(ids.size() / backend->kv_block_size() + 1);
    for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = static_cast<int32_t>(i);
    SequenceStep step{ids, 0, blocks, LogitsWanted::kAll};
    StepLogits logits;
    ASSERT_TRUE(backend->Forward({&step, 1}, &logits).ok());
    ASSERT_EQ(logits.values.size(), ref.size());
    double max_diff = 0;
    for (size_t i = 0; i < ref.size(); ++i) max_diff = std::max(max_diff, std::abs(double(logits.values[i]) - ref[i]));
    EXPECT_LT(max_diff, 1e-4) << GetParam().name << " " << prompt;
  }
}

TEST_P(ReferenceTest, PromptLogProbsMatchWithin1e4) {
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
    for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(got[i], ref[i], 1e-4) << p["prompt"] << " token " << i + 1;
  }
}

TEST_P(ReferenceTest, GreedyGenerationsMatchUpToFirstNearTie) {
  auto backend = OpenBackend(ModelDir());
  const auto gens = ReadJson(RefDir() + "/generations.json");
  for (const auto& g : gens["results"]) {
    const auto prompt = g["prompt_ids"].get<std::vector<int32_t>>();
    const auto ref = g["generated_ids"].get<std::vector<int32_t>>();
    size_t compare = ref.size();
    if (!g["first_step_with_margin_below_1e-3"].is_null()) compare = g["first_step_with_margin_below_1e-3"].get<size_t>();
    const auto got = Greedy(backend.get(), {prompt}, static_cast<int>(ref.size()))[0];
    ASSERT_EQ(got.size(), ref.size());
    for (size_t i = 0; i < compare; ++i) ASSERT_EQ(got[i], ref[i]) << g["prompt"] << " step " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(TinyCheckpoints, ReferenceTest, ::testing::ValuesIn(TinyModels()),
                         [](const auto& info) {
                           std::string n = info.param.name;
                           for (char& c : n) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return n;
                         });

}  // namespace
}  // namespace gemma::testing
