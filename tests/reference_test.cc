// The engine against Google's reference outputs: scores and greedy generations of every tiny checkpoint. (Each
// backend's logits against the reference are in shard/conformance/backend_conformance_test.cc.)
#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "shard/checkpoint/checkpoint.h"
#include "tests/reference_helpers.h"
#include "tests/testdata.h"

namespace gemma::testing {

namespace {

class ReferenceTest : public ::testing::TestWithParam<TinyModel> {
 protected:
  void SetUp() override {
    root_ = GetParam().root();
    ASSERT_FALSE(root_.empty()) << "test data for " << GetParam().name << " is absent";
  }
  std::string ModelDir() const { return root_ + "/" + GetParam().name; }
  std::string RefDir() const { return root_ + "/reference/" + GetParam().reference; }
  std::string root_;
};

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

std::string ModelName(const ::testing::TestParamInfo<TinyModel>& info) {
  std::string n = info.param.name;
  for (char& c : n) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return n;
}

INSTANTIATE_TEST_SUITE_P(TinyCheckpoints, ReferenceTest, ::testing::ValuesIn(TinyModels()), ModelName);
INSTANTIATE_TEST_SUITE_P(Gemma23Checkpoints, ReferenceTest, ::testing::ValuesIn(Gemma23TinyModels()), ModelName);

}  // namespace
}  // namespace gemma::testing
