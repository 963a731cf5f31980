#include "shard/model/tensor_parallel.h"

#include "gtest/gtest.h"

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
