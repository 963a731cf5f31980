// Chunked prefill, batch invariance and the prefix cache, through the engine the server and the gemma command
// share: the same tokens however a sequence is split into steps, batched, or started from cached blocks.
#include "engine/local_executor.h"
#include "gtest/gtest.h"
#include "tests/reference_helpers.h"
#include "tests/testdata.h"

namespace gemma::testing {
namespace {

std::vector<std::vector<int32_t>> Prompts(const std::string& ref_dir) {
  std::vector<std::vector<int32_t>> prompts;
  // Held in a variable: a range-for over a member of a temporary reads destroyed memory.
  const auto generations = ReadJson(ref_dir + "/generations.json");
  for (const auto& g : generations["results"]) {
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

// Prompts that share a long prefix (a system prompt, a conversation so far), some of them exactly a cached prefix.
std::vector<SequenceSpec> SharedPrefixSpecs(const std::vector<std::vector<int32_t>>& prompts, bool seeded) {
  std::vector<int32_t> prefix;
  for (const auto& p : prompts) prefix.insert(prefix.end(), p.begin(), p.end());
  prefix.resize(std::min<size_t>(prefix.size(), 70));
  std::vector<SequenceSpec> specs;
  for (size_t i = 0; i < prompts.size(); ++i) {
    SequenceSpec s;
    s.prompt = prefix;
    s.prompt.insert(s.prompt.end(), prompts[i].begin(), prompts[i].begin() + std::min<size_t>(prompts[i].size(), i));
    s.max_new_tokens = 12;
    if (seeded) s.sampling = {0.9f, 40, 0.95f, 1000 + i};
    specs.push_back(s);
  }
  return specs;
}

TEST_P(BatchingTest, ThePrefixCacheChangesNoTokenAndNoLogProb) {
  auto backend = OpenBackend(GemmaTinyDir() + "/" + GetParam());
  const auto prompts = Prompts(GemmaTinyDir() + "/reference/" + GetParam());
  for (bool seeded : {false, true}) {
    const auto specs = SharedPrefixSpecs(prompts, seeded);
    // One at a time, so that each later request finds the earlier ones' blocks cached.
    std::vector<CompletedSequence> cold, warm;
    for (const auto& s : specs) {
      cold.push_back(RunOnEngine(backend.get(), {s}, {}, false)[0]);
    }
    LocalExecutor executor(backend.get());
    Engine engine(executor.EngineOptionsFor({}, true), &executor);
    for (const auto& s : specs) {
      auto r = RunBatch(engine, {s});
      ASSERT_TRUE(r.ok()) << r.status();
      warm.push_back((*r)[0]);
    }
    EXPECT_GT(engine.scheduler().prefix_hit_tokens(), 0);
    for (size_t i = 0; i < specs.size(); ++i) {
      EXPECT_EQ(warm[i].tokens, cold[i].tokens) << i << (seeded ? " seeded" : " greedy");
      EXPECT_EQ(warm[i].token_logprobs, cold[i].token_logprobs) << i << (seeded ? " seeded" : " greedy");
    }
    // All at once: the cache fills while the batch runs, in small steps.
    const auto together = RunOnEngine(backend.get(), specs, {20, 5}, true);
    for (size_t i = 0; i < specs.size(); ++i) EXPECT_EQ(together[i].tokens, cold[i].tokens) << i;
  }
}

INSTANTIATE_TEST_SUITE_P(TinyCheckpoints, BatchingTest, ::testing::Values("tiny-mha", "tiny-mqa", "tiny-mha-hd48"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return n;
                         });

}  // namespace
}  // namespace gemma::testing
