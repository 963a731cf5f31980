// What the CUDA backend's tests share: opening tiny checkpoints on the device, and random bf16 data.
#pragma once

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/cuda/cuda_backend.h"
#include "shard/model/model_weights.h"

namespace gemma::cuda_testing {

inline bool HaveDevice() { return CudaBackendBuilt() && CudaDeviceCount() > 0; }

inline std::shared_ptr<const ModelWeights> LoadWeights(const std::string& dir) {
  auto ckpt = Checkpoint::Open(dir);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  auto weights = ModelWeights::Load(std::shared_ptr<const Checkpoint>(std::move(*ckpt)));
  EXPECT_TRUE(weights.ok()) << weights.status();
  return std::shared_ptr<const ModelWeights>(std::move(*weights));
}

inline KvCacheOptions Kv(int tokens) {
  KvCacheOptions kv;
  kv.num_blocks = tokens / kv.block_size;
  return kv;
}

inline std::unique_ptr<Backend> OpenCuda(const std::string& dir, CudaPrecision precision, CudaCollective collective = {},
                                         bool graphs = true) {
  CudaBackendOptions o;
  o.precision = precision;
  o.cuda_graphs = graphs;
  auto b = CreateCudaBackend(LoadWeights(dir), Kv(4096), o, std::move(collective));
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? std::move(*b) : nullptr;
}

inline std::vector<int32_t> Blocks(size_t tokens, int block_size, int first = 0) {
  std::vector<int32_t> b(tokens / block_size + 1);
  for (size_t i = 0; i < b.size(); ++i) b[i] = first + static_cast<int32_t>(i);
  return b;
}

// bf16 bit patterns of normally distributed values.
inline std::vector<uint16_t> RandomBf16(size_t count, std::mt19937& rng) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<uint16_t> v(count);
  for (auto& x : v) {
    const float f = n(rng);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    x = static_cast<uint16_t>(bits >> 16);
  }
  return v;
}

}  // namespace gemma::cuda_testing
