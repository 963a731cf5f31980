#include "shard/model/tensor_parallel.h"

#include <algorithm>
#include <vector>

#include "gtest/gtest.h"
#include "shard/model/published_shapes.h"

namespace gemma {
namespace {

TEST(TensorParallelTest, SplitsHeadsFfnAndVocabulary) {
  auto tp = TensorParallel::Create(Gemma7BShape(), 1, 4);
  ASSERT_TRUE(tp.ok());
  EXPECT_EQ(tp->num_q_heads, 4);
  EXPECT_EQ(tp->q_head_begin, 4);
  EXPECT_EQ(tp->num_kv_heads, 4);
  EXPECT_EQ(tp->kv_head_begin, 4);
  EXPECT_EQ(tp->ffn_size, 6144);
  EXPECT_EQ(tp->ffn_begin, 6144);
  EXPECT_EQ(tp->vocab_begin, 64000);
  EXPECT_EQ(tp->vocab_end, 128000);
}

TEST(TensorParallelTest, ReplicatesTheSingleKvHeadOf2B) {
  for (int world : {2, 4, 8}) {
    for (int rank = 0; rank < world; ++rank) {
      auto tp = TensorParallel::Create(Gemma2BShape(), rank, world);
      ASSERT_TRUE(tp.ok()) << world;
      EXPECT_EQ(tp->num_kv_heads, 1);
      EXPECT_EQ(tp->kv_head_begin, 0);
      EXPECT_EQ(tp->num_q_heads, 8 / world);
    }
  }
}

// Every rank of every Gemma 2/3 shape holds whole heads, a kv head for each of them (replicated where there are
// fewer kv heads than ranks) and an equal FFN slice; the vocabulary is covered once; every query head's output is
// added by exactly one rank (the 1B's 4 heads at TP 8 are each held by two ranks).
TEST(TensorParallelTest, Gemma23ShapesSplitAtTp248) {
  for (const auto& [name, c] : PublishedGemma23Shapes()) {
    for (int world : {2, 4, 8}) {
      int vocab = 0;
      std::vector<int> added(c.num_heads, 0);
      for (int rank = 0; rank < world; ++rank) {
        auto tp = TensorParallel::Create(c, rank, world);
        ASSERT_TRUE(tp.ok()) << name << " tp " << world << ": " << tp.status();
        EXPECT_EQ(tp->num_q_heads * world, c.num_heads * tp->q_head_replicas) << name;
        EXPECT_EQ(tp->q_head_replicas > 1, world > c.num_heads) << name;
        EXPECT_EQ(tp->num_kv_heads, std::max(1, c.num_kv_heads / world)) << name;
        for (int h = tp->q_head_begin; h < tp->q_head_begin + tp->num_q_heads; ++h) {
          // The kv head of each of this rank's query heads is one this rank holds.
          const int kv = h / c.heads_per_kv();
          EXPECT_TRUE(kv >= tp->kv_head_begin && kv < tp->kv_head_begin + tp->num_kv_heads) << name << " " << h;
          added[h] += tp->adds_attention_output ? 1 : 0;
        }
        EXPECT_EQ(tp->ffn_size * world, c.intermediate_size) << name;
        EXPECT_EQ(tp->vocab_begin, vocab) << name;
        vocab = tp->vocab_end;
      }
      EXPECT_EQ(vocab, c.vocab_size) << name;
      EXPECT_EQ(added, std::vector<int>(c.num_heads, 1)) << name << " tp " << world;
    }
  }
}

TEST(TensorParallelTest, UnevenVocabularyIsCoveredOnce) {
  ModelConfig c = TinyShape();
  c.vocab_size = 4099;
  int covered = 0;
  for (int rank = 0; rank < 4; ++rank) {
    auto tp = TensorParallel::Create(c, rank, 4);
    ASSERT_TRUE(tp.ok());
    EXPECT_EQ(tp->vocab_begin, covered);
    covered = tp->vocab_end;
    EXPECT_LE(tp->vocab_end - tp->vocab_begin, tp->vocab_slice);
  }
  EXPECT_EQ(covered, 4099);
}

TEST(TensorParallelTest, RejectsImpossibleDegrees) {
  auto three = TensorParallel::Create(Gemma7BShape(), 0, 3);
  ASSERT_FALSE(three.ok());
  EXPECT_NE(three.status().message().find("does not divide the 16 attention heads"), std::string::npos);
  EXPECT_FALSE(TensorParallel::Create(Gemma2BShape(), 2, 2).ok());
  EXPECT_FALSE(TensorParallel::Create(Gemma2BShape(), -1, 2).ok());
  EXPECT_FALSE(TensorParallel::Create(Gemma2BShape(), 0, 0).ok());
}

}  // namespace
}  // namespace gemma
