// The paged KV cache: a pool of fixed-size blocks; each sequence reaches its rows through its own block table.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "shard/model/model_config.h"

namespace gemma {

struct KvCacheOptions {
  int block_size = 16;  // token positions per block
  int num_blocks = 0;   // 0: derive from max_bytes
  int64_t max_bytes = int64_t{1} << 30;
  // A GPU backend with memory_fraction > 0 plans the cache itself: the process keeps within this share of the
  // device's memory, and the cache takes what the weights and the largest step (StepLimits) leave of it
  // (vLLM's gpu_memory_utilization). num_blocks and max_bytes then go unused; the CPU ignores it.
  double memory_fraction = 0;
};

// Layout of one block, f32: [layers][2 (K, V)][kv_heads][block_size][head_dim].
// Not thread-safe for concurrent writes to the same block; a step writes each
// (sequence, position) row once.
class KvCache {
 public:
  static absl::StatusOr<KvCache> Create(const ModelConfig& config, const KvCacheOptions& options);

  int block_size() const { return block_size_; }
  int num_blocks() const { return num_blocks_; }
  int64_t block_stride() const { return block_stride_; }
  int64_t BytesPerBlock() const { return block_stride_ * static_cast<int64_t>(sizeof(float)); }
  // Start of layer `layer`'s K (kv = 0) or V (kv = 1) region inside block 0; add block * block_stride().
  float* Base(int layer, int kv) { return data_.data() + (static_cast<int64_t>(layer) * 2 + kv) * layer_kv_stride_; }
  // Offset of a kv head's rows inside a block's layer region.
  int64_t HeadOffset(int kv_head) const { return static_cast<int64_t>(kv_head) * block_size_ * head_dim_; }

 private:
  int block_size_ = 0;
  int num_blocks_ = 0;
  int head_dim_ = 0;
  int64_t layer_kv_stride_ = 0;
  int64_t block_stride_ = 0;
  std::vector<float> data_;
};

// Hands out block ids for local (router-less) use. Not thread-safe.
class BlockAllocator {
 public:
  explicit BlockAllocator(int num_blocks);
  // n blocks, or ResourceExhausted saying how many are free.
  absl::StatusOr<std::vector<int32_t>> Allocate(int n);
  void Free(const std::vector<int32_t>& blocks);
  int num_free() const { return static_cast<int>(free_.size()); }

 private:
  std::vector<int32_t> free_;
};

}  // namespace gemma
