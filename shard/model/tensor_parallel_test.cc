#include "shard/model/tensor_parallel.h"

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
// fewer kv heads than ranks) and an equal FFN slice; the vocabulary is covered once. The 1B's 4 query heads cannot
// be split 8 ways, and that is refused naming the heads.
TEST(TensorParallelTest, Gemma23ShapesSplitAtTp248) {
  for (const auto& [name, c] : PublishedGemma23Shapes()) {
    for (int world : {2, 4, 8}) {
      if (c.num_heads % world != 0) {
        auto tp = TensorParallel::Create(c, 0, world);
        ASSERT_FALSE(tp.ok()) << name << " tp " << world;
        EXPECT_NE(tp.status().message().find("does not divide the 4 attention heads"), std::string::npos)
            << tp.status();
        EXPECT_EQ(name, "gemma3-1b");
        continue;
      }
      int vocab = 0;
      for (int rank = 0; rank < world; ++rank) {
        auto tp = TensorParallel::Create(c, rank, world);
        ASSERT_TRUE(tp.ok()) << name << " tp " << world << ": " << tp.status();
        EXPECT_EQ(tp->num_q_heads * world, c.num_heads) << name;
        EXPECT_EQ(tp->num_kv_heads, std::max(1, c.num_kv_heads / world)) << name;
        // The kv head of each of this rank's query heads is one this rank holds.
        for (int h = tp->q_head_begin; h < tp->q_head_begin + tp->num_q_heads; ++h) {
          const int kv = h / c.heads_per_kv();
          EXPECT_TRUE(kv >= tp->kv_head_begin && kv < tp->kv_head_begin + tp->num_kv_heads) << name << " " << h;
        }
        EXPECT_EQ(tp->ffn_size * world, c.intermediate_size) << name;
        EXPECT_EQ(tp->vocab_begin, vocab) << name;
        vocab = tp->vocab_end;
      }
      EXPECT_EQ(vocab, c.vocab_size) << name;
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
