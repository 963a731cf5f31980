// Chunked prefill and batch invariance: the same tokens however a sequence is split into steps or batched.
#include "gtest/gtest.h"
#include "tests/reference_helpers.h"
#include "tests/testdata.h"

namespace gemma::testing {
namespace {

std::vector<std::vector<int32_t>> Prompts(const std::string& ref_dir) {
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& g : ReadJson(ref_dir + "/generations.json")["results"]) {
    prompts.push_back(g["prompt_ids"].get<std::vector<int32_t>>());
  }
  const auto rand = ReadJson(ref_dir + "/logits_rand37.json");
  prompts.push_back(rand["ids"].get<std::vector<int32_t>>());
  return prompts;
}

class BatchingTest : public ::testing::TestWithParam<std::string> {};

TEST_P(BatchingTest, ChunkedPrefillGivesIdenticalTokens) {
  auto backend = OpenBackend(GemmaTinyDir() + "/" + GetParam());
  for (const auto& prompt : Prompts(GemmaTinyDir() + "/reference/" + GetParam())) {
    const auto whole = Greedy(backend.get(), {prompt}, 16, {512, 512})[0];
    EXPECT_EQ(Greedy(backend.get(), {prompt}, 16, {512, 7})[0], whole) << "chunks of 7";
    EXPECT_EQ(Greedy(backend.get(), {prompt}, 16, {512, 1})[0], whole) << "one token at a time";
  }
}

TEST_P(BatchingTest, GreedyTokensAreBatchInvariant) {
  auto backend = OpenBackend(GemmaTinyDir() + "/" + GetParam());
  const auto prompts = Prompts(GemmaTinyDir() + "/reference/" + GetParam());
  std::vector<std::vector<int32_t>> alone;
  for (const auto& p : prompts) alone.push_back(Greedy(backend.get(), {p}, 24)[0]);
  // All together: prefills and decodes of different lengths share steps.
  EXPECT_EQ(Greedy(backend.get(), prompts, 24), alone);
  // A small token budget mixes one sequence's prefill chunks with others' decodes.
  EXPECT_EQ(Greedy(backend.get(), prompts, 24, {20, 5}), alone);
}

INSTANTIATE_TEST_SUITE_P(TinyCheckpoints, BatchingTest, ::testing::Values("tiny-mha", "tiny-mqa", "tiny-mha-hd48"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return n;
                         });

}  // namespace
}  // namespace gemma::testing
