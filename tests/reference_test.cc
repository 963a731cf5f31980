// The engine against Google's reference outputs: scores and greedy generations of every tiny checkpoint. (Each
// backend's logits against the reference are in shard/conformance/backend_conformance_test.cc.)
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
