#include "shard/runtime/kv_cache.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace gemma {

absl::StatusOr<KvCache> KvCache::Create(const ModelConfig& config, const KvCacheOptions& options) {
  if (options.block_size <= 0 || options.block_size > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("KV block size ", options.block_size, " is out of range; allowed 1..1024"));
  }
  KvCache kv;
  kv.block_size_ = options.block_size;
  kv.head_dim_ = config.head_dim;
  const int64_t per_kv_head = static_cast<int64_t>(options.block_size) * config.head_dim;
  // Within a block: [layers][2][kv_heads][block_size][head_dim]; blocks are the outer dimension.
  kv.block_stride_ = per_kv_head * config.num_kv_heads * 2 * config.num_layers;
  kv.layer_kv_stride_ = per_kv_head * config.num_kv_heads;
  int64_t blocks = options.num_blocks;
  if (blocks <= 0) blocks = options.max_bytes / kv.BytesPerBlock();
  if (blocks <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache of ", options.max_bytes, " bytes holds no block of ",
                                                   kv.BytesPerBlock(), " bytes"));
  }
  if (blocks > (int64_t{1} << 30)) return absl::InvalidArgumentError("KV cache block count is too large");
  kv.num_blocks_ = static_cast<int>(blocks);
  try {
    kv.data_.assign(static_cast<size_t>(blocks * kv.block_stride_), 0.0f);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate a KV cache of ", blocks * kv.BytesPerBlock(), " bytes"));
  }
  return kv;
}

BlockAllocator::BlockAllocator(int num_blocks) {
  free_.reserve(num_blocks);
  for (int i = num_blocks - 1; i >= 0; --i) free_.push_back(i);
}

absl::StatusOr<std::vector<int32_t>> BlockAllocator::Allocate(int n) {
  if (n > num_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache full: need ", n, " blocks, ", num_free(), " free"));
  }
  std::vector<int32_t> out(free_.end() - n, free_.end());
  free_.resize(free_.size() - n);
  return out;
}

void BlockAllocator::Free(const std::vector<int32_t>& blocks) { free_.insert(free_.end(), blocks.begin(), blocks.end()); }

}  // namespace gemma
