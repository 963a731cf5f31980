// The tensor-core decode GEMM's shape constants and its split of K (decode_gemm.h), in plain C++.
#pragma once

#include <cstdint>

namespace gemma::cuda {

inline constexpr int kDecodeMmaMaxRows = 64;
inline constexpr int kDecodeMmaFeaturesPerBlock = 64;  // output columns (weight rows) per block
inline constexpr int kDecodeMmaChunk = 32;             // K elements per 16-byte load of 4 lanes

// How many blocks share one column's K range, from the shape and the device alone (so every batch size of a shape
// sums in the same order): enough blocks to keep `multiprocessors` busy with loads in flight, while each block keeps
// at least 1024 elements of K and the split sums stay small beside the weights.
int DecodeMmaSplits(int64_t N, int64_t K, int multiprocessors);

}  // namespace gemma::cuda
