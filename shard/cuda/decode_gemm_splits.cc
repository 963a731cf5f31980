#include "shard/cuda/decode_gemm_splits.h"

namespace gemma::cuda {

int DecodeMmaSplits(int64_t N, int64_t K, int multiprocessors) {
  const int64_t columns = (N + kDecodeMmaFeaturesPerBlock - 1) / kDecodeMmaFeaturesPerBlock;
  int splits = 1;
  // Four blocks per multiprocessor keep enough weight loads in flight; a split under 1024 elements of K spends more
  // on its partial sums than it gains, and past 8 splits the sums cost more traffic than the tail they save.
  while (columns * splits < 4 * static_cast<int64_t>(multiprocessors) && splits < 8 &&
         K / (2 * splits) >= 1024 && K % (2 * splits * kDecodeMmaChunk) == 0) {
    splits *= 2;
  }
  return splits;
}

}  // namespace gemma::cuda
