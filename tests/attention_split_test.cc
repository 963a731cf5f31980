// CPU attention shares a long row's key segments out over the threads when a step has few rows, and keeps a row
// on one thread when it has many (CpuBackend::Attention). Both must give the row the same arithmetic: a decode row
// over 300 positions (two segments) has the same logits bit for bit alone on many threads, alone on one thread,
// and beside other rows, on every tiny checkpoint (sliding windows included).
#include <omp.h>

#include <random>

#include "gtest/gtest.h"
#include "tests/reference_helpers.h"

namespace gemma::testing {
namespace {

class AttentionSplitTest : public TinyCheckpointTest {};

TEST_P(AttentionSplitTest, ALongRowHasTheSameLogitsSplitOrWholeAloneOrInABatch) {
  auto backend = OpenBackend(ModelDir(), 4096);
  ASSERT_NE(backend, nullptr);
  const int vocab = backend->config().vocab_size, bs = backend->kv_block_size();
  constexpr int kLong = 300, kOthers = 15;
  std::mt19937 rng(3);
  std::vector<int32_t> prompt(kLong);
  for (auto& t : prompt) t = static_cast<int32_t>(rng() % vocab);
  auto range = [](int begin, int n) {
    std::vector<int32_t> r(n);
    for (int i = 0; i < n; ++i) r[i] = begin + i;
    return r;
  };
  const int long_blocks = (kLong + 1 + bs - 1) / bs;
  const auto blocks = range(0, long_blocks);
  SequenceStep prefill{prompt, 0, blocks, LogitsWanted::kNone};
  StepLogits ignored;
  ASSERT_TRUE(backend->Forward({&prefill, 1}, &ignored).ok());
  // Short sequences to batch the long row with.
  std::vector<std::vector<int32_t>> other_blocks;
  std::vector<int32_t> other_prompt(8, 7);
  for (int s = 0; s < kOthers; ++s) {
    other_blocks.push_back(range(long_blocks + s, 1));
    SequenceStep p{other_prompt, 0, other_blocks.back(), LogitsWanted::kNone};
    ASSERT_TRUE(backend->Forward({&p, 1}, &ignored).ok());
  }

  const int32_t token = 5, other_token = 9;
  auto decode_long = [&](int threads, bool batched) {
    omp_set_num_threads(threads);
    std::vector<SequenceStep> step;
    step.push_back({{&token, 1}, kLong, blocks, LogitsWanted::kLast});
    if (batched) {
      for (int s = 0; s < kOthers; ++s) step.push_back({{&other_token, 1}, 8, other_blocks[s], LogitsWanted::kLast});
    }
    StepLogits logits;
    EXPECT_TRUE(backend->Forward(step, &logits).ok());
    return std::vector<float>(logits.Row(0), logits.Row(0) + vocab);
  };
  const int threads = omp_get_max_threads();
  const auto split = decode_long(8, false);  // 1 row, few heads: its two segments are separate work items
  const auto whole = decode_long(1, false);  // one thread: the row whole
  const auto batched = decode_long(2, true);  // 16 rows: each row whole on a thread
  omp_set_num_threads(threads);
  EXPECT_EQ(whole, split) << "one thread against segments split over eight";
  EXPECT_EQ(batched, split) << "beside 15 other rows against alone";
}

INSTANTIATE_TEST_SUITE_P(Gemma1, AttentionSplitTest, ::testing::ValuesIn(TinyModels()), TinyModelName);
INSTANTIATE_TEST_SUITE_P(Gemma23, AttentionSplitTest, ::testing::ValuesIn(Gemma23TinyModels()), TinyModelName);

}  // namespace
}  // namespace gemma::testing
