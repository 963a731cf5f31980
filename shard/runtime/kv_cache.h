// The paged KV cache: a pool of fixed-size blocks; each sequence reaches its rows through its own block table.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/step_protocol.h"
#include "shard/model/huge_pages.h"
#include "shard/model/model_config.h"

namespace gemma {

// How the cache stores K and V (--kv_cache_dtype). kAuto: the backend's own (f32 on the CPU; the compute precision,
// bf16 or f32, on the GPU). kInt8: symmetric codes with one f32 scale per row (a position's head_dim values of
// one kv head) — the CPU's compact form; kFp8 (E4M3) is the GPU's.
enum class KvCacheDtype : uint8_t { kAuto, kF32, kBF16, kInt8, kFp8 };
absl::StatusOr<KvCacheDtype> ParseKvCacheDtype(absl::string_view name);
const char* KvCacheDtypeName(KvCacheDtype dtype);
inline constexpr char kKvCacheDtypeNames[] = "auto, f32, bf16, int8, fp8";

struct KvCacheOptions {
  int block_size = 16;  // token positions per block
  int num_blocks = 0;   // 0: derive from max_bytes
  int64_t max_bytes = int64_t{1} << 30;
  // A GPU backend with memory_fraction > 0 plans the cache itself: the process keeps within this share of the
  // device's memory, and the cache takes what the weights and the largest step (StepLimits) leave of it
  // (vLLM's gpu_memory_utilization). num_blocks and max_bytes then go unused; the CPU ignores it.
  double memory_fraction = 0;
  // A model with sliding-window (local) layers keeps only their window (KvLayout): blocks hold as many layers as
  // the model has global ones, and a sequence's local layers take blocks of their own, given back as the window
  // passes. False: every block holds every layer of its positions (as for Gemma 1, which has no windows).
  bool windowed = false;
  KvCacheDtype dtype = KvCacheDtype::kAuto;
};

// Which layers a block holds and how each layer finds its blocks (KvWindow). Without windows a block holds every
// layer; with them, a global block the global layers and a local block one group of local layers (in layer order,
// group_layers to a group, the last one padded). Thread-compatible (const after construction).
class KvLayout {
 public:
  KvLayout() = default;
  KvLayout(const ModelConfig& config, bool windowed);

  const KvWindow& window() const { return window_; }
  int group_layers() const { return group_layers_; }  // layers a block holds
  // Values in one block of `block_size` positions for `kv_heads` heads of `head_dim`: K and V of group_layers.
  int64_t BlockValues(int block_size, int kv_heads, int head_dim) const {
    return static_cast<int64_t>(block_size) * head_dim * kv_heads * 2 * group_layers_;
  }
  // A layer's place in its block, and its local group (-1: a global layer, or no windows).
  int Slot(int layer) const { return slot_[layer]; }
  int LocalGroup(int layer) const { return group_[layer]; }

 private:
  KvWindow window_;
  int group_layers_ = 0;
  std::vector<int> slot_, group_;
};

// Where one layer of one sequence finds the block of each block index: its global table (stride 1 from index 0),
// or its local table (local_groups entries an index, from local_begin on, offset by its group).
struct KvTableView {
  const int32_t* table = nullptr;
  int stride = 1;
  int32_t first = 0;
  int32_t Block(int64_t index) const { return table[(index - first) * stride]; }

  static KvTableView For(const KvLayout& layout, int layer, std::span<const int32_t> global,
                         std::span<const int32_t> local, int32_t local_begin) {
    const int group = layout.LocalGroup(layer);
    if (group < 0) return {global.data(), 1, 0};
    return {local.data() + group, layout.window().local_groups, local_begin};
  }
};

// One layer's K or V region (in block 0) as stored: row r (a position of one kv head, head_dim values) starts at
// element r * head_dim; add block * block_stride() elements for another block.
struct KvRows {
  KvCacheDtype dtype = KvCacheDtype::kF32;  // kF32, kBF16 or kInt8
  const void* base = nullptr;               // float, uint16_t (bf16) or int8_t elements
  const float* scales = nullptr;            // kInt8: one per row, scales[element offset / head_dim]
};

// Layout of one block: [group_layers][2 (K, V)][kv_heads][block_size][head_dim] elements (KvLayout), in the
// cache's dtype; kInt8 keeps its row scales in a parallel array laid out alike without the head_dim.
// Not thread-safe for concurrent writes to the same block; a step writes each (sequence, position) row once.
class KvCache {
 public:
  // InvalidArgument for a dtype the CPU does not store (fp8: the GPU's).
  static absl::StatusOr<KvCache> Create(const ModelConfig& config, const KvCacheOptions& options);

  int block_size() const { return block_size_; }
  int num_blocks() const { return num_blocks_; }
  KvCacheDtype dtype() const { return dtype_; }
  const KvLayout& layout() const { return layout_; }
  int64_t block_stride() const { return block_stride_; }  // elements
  int64_t BytesPerBlock() const;
  // Layer `layer`'s K (kv = 0) or V (kv = 1) region.
  KvRows Rows(int layer, int kv) const;
  // Stores head_dim values at element `offset` of that region (block * block_stride() + HeadOffset(h) +
  // slot * head_dim), rounding them to the cache's dtype.
  void WriteRow(int layer, int kv, int64_t offset, const float* values);
  // Offset of a kv head's rows inside a block's layer region.
  int64_t HeadOffset(int kv_head) const { return static_cast<int64_t>(kv_head) * block_size_ * head_dim_; }

 private:
  int64_t RegionElements(int layer, int kv) const {
    return (static_cast<int64_t>(layout_.Slot(layer)) * 2 + kv) * layer_kv_stride_;
  }

  int block_size_ = 0;
  int num_blocks_ = 0;
  int head_dim_ = 0;
  KvCacheDtype dtype_ = KvCacheDtype::kF32;
  int element_bytes_ = 4;
  KvLayout layout_;
  int64_t layer_kv_stride_ = 0;
  int64_t block_stride_ = 0;
  HugePageBuffer data_;  // blocks are read scattered: huge pages spare the TLB
  std::vector<float> scales_;  // kInt8
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
