#include "shard/runtime/kv_cache.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace gemma {

KvLayout::KvLayout(const ModelConfig& config, bool windowed) {
  const int n = config.num_layers;
  slot_.assign(n, 0);
  group_.assign(n, -1);
  int global = 0;
  for (int l = 0; l < n; ++l) global += config.IsLocal(l) ? 0 : 1;
  // Windows need both kinds: without local layers nothing leaves a window, without global ones nothing sizes a block.
  if (!windowed || config.sliding_window <= 0 || global == 0 || global == n) {
    group_layers_ = n;
    for (int l = 0; l < n; ++l) slot_[l] = l;
    return;
  }
  group_layers_ = global;
  int g = 0, local = 0;
  for (int l = 0; l < n; ++l) {
    if (config.IsLocal(l)) {
      group_[l] = local / global;
      slot_[l] = local++ % global;
    } else {
      slot_[l] = g++;
    }
  }
  window_ = {config.sliding_window, (local + global - 1) / global};
}

absl::StatusOr<KvCache> KvCache::Create(const ModelConfig& config, const KvCacheOptions& options) {
  if (options.block_size <= 0 || options.block_size > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("KV block size ", options.block_size, " is out of range; allowed 1..1024"));
  }
  KvCache kv;
  kv.block_size_ = options.block_size;
  kv.head_dim_ = config.head_dim;
  kv.layout_ = KvLayout(config, options.windowed);
  // Within a block: [group_layers][2][kv_heads][block_size][head_dim]; blocks are the outer dimension.
  kv.block_stride_ = kv.layout_.BlockValues(options.block_size, config.num_kv_heads, config.head_dim);
  kv.layer_kv_stride_ = kv.block_stride_ / (2 * kv.layout_.group_layers());
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
