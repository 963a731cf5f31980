// The decode GEMM's split of K: from the shape and the device only, enough blocks for the device, never a split
// under 1024 elements, never more than 8.
#include "gtest/gtest.h"
#include "shard/cuda/decode_gemm_splits.h"

namespace gemma::cuda {
namespace {

TEST(DecodeGemmSplitsTest, WideProductsAreNotSplit) {
  EXPECT_EQ(DecodeMmaSplits(/*N=*/49152, /*K=*/3072, 132), 1);   // gate and up of Gemma 7B: 768 blocks already
  EXPECT_EQ(DecodeMmaSplits(/*N=*/256000, /*K=*/3072, 132), 1);  // the logits
}

TEST(DecodeGemmSplitsTest, NarrowProductsAreSplitToFillTheDevice) {
  // Gemma 7B's down projection: 48 columns of blocks.
  const int down = DecodeMmaSplits(3072, 24576, 132);
  EXPECT_EQ(down, 8);
  EXPECT_GE(48 * down, 4 * 132 / 2);
  // Its output projection: K = 4096 allows at most 4 splits of >= 1024.
  EXPECT_EQ(DecodeMmaSplits(3072, 4096, 132), 4);
  // A tiny model's K under 2048 is never split.
  EXPECT_EQ(DecodeMmaSplits(64, 1024, 132), 1);
}

TEST(DecodeGemmSplitsTest, TheSplitDividesK) {
  for (int64_t K : {2048, 3072, 4096, 6144, 24576, 16384 + 32}) {
    for (int64_t N : {64, 640, 3072}) {
      const int s = DecodeMmaSplits(N, K, 132);
      EXPECT_EQ(K % (s * kDecodeMmaChunk), 0) << N << " x " << K;
      EXPECT_LE(s, 8);
      EXPECT_GE(K / s, 1024) << N << " x " << K;
    }
  }
}

}  // namespace
}  // namespace gemma::cuda
