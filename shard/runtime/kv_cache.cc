#include "shard/runtime/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "shard/model/dtype.h"

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

absl::StatusOr<KvCacheDtype> ParseKvCacheDtype(absl::string_view name) {
  for (KvCacheDtype d : {KvCacheDtype::kAuto, KvCacheDtype::kF32, KvCacheDtype::kBF16, KvCacheDtype::kInt8,
                         KvCacheDtype::kFp8}) {
    if (name == KvCacheDtypeName(d)) return d;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("\"", name, "\" is not a KV cache dtype; allowed: ", kKvCacheDtypeNames));
}

const char* KvCacheDtypeName(KvCacheDtype dtype) {
  switch (dtype) {
    case KvCacheDtype::kAuto:
      return "auto";
    case KvCacheDtype::kF32:
      return "f32";
    case KvCacheDtype::kBF16:
      return "bf16";
    case KvCacheDtype::kInt8:
      return "int8";
    case KvCacheDtype::kFp8:
      return "fp8";
  }
  return "?";
}

absl::StatusOr<KvCache> KvCache::Create(const ModelConfig& config, const KvCacheOptions& options) {
  if (options.block_size <= 0 || options.block_size > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("KV block size ", options.block_size, " is out of range; allowed 1..1024"));
  }
  KvCache kv;
  switch (options.dtype) {
    case KvCacheDtype::kAuto:
    case KvCacheDtype::kF32:
      kv.dtype_ = KvCacheDtype::kF32;
      kv.element_bytes_ = 4;
      break;
    case KvCacheDtype::kBF16:
      kv.dtype_ = KvCacheDtype::kBF16;
      kv.element_bytes_ = 2;
      break;
    case KvCacheDtype::kInt8:
      kv.dtype_ = KvCacheDtype::kInt8;
      kv.element_bytes_ = 1;
      break;
    case KvCacheDtype::kFp8:
      return absl::InvalidArgumentError(
          "KV cache dtype fp8 (E4M3) is for GPUs; the CPU stores f32 (auto), bf16 or int8");
  }
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
    const size_t bytes = static_cast<size_t>(blocks * kv.block_stride_ * kv.element_bytes_);
    kv.data_ = AllocateHugePages(static_cast<int64_t>(bytes));
    std::memset(kv.data_.get(), 0, bytes);
    if (kv.dtype_ == KvCacheDtype::kInt8) kv.scales_.assign(static_cast<size_t>(blocks * kv.block_stride_ / kv.head_dim_), 0.0f);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate a KV cache of ", blocks * kv.BytesPerBlock(), " bytes"));
  }
  return kv;
}

int64_t KvCache::BytesPerBlock() const {
  const int64_t scales = dtype_ == KvCacheDtype::kInt8 ? block_stride_ / head_dim_ * 4 : 0;
  return block_stride_ * element_bytes_ + scales;
}

KvRows KvCache::Rows(int layer, int kv) const {
  const int64_t region = RegionElements(layer, kv);
  KvRows rows;
  rows.dtype = dtype_;
  rows.base = data_.get() + region * element_bytes_;
  if (dtype_ == KvCacheDtype::kInt8) rows.scales = scales_.data() + region / head_dim_;
  return rows;
}

void KvCache::WriteRow(int layer, int kv, int64_t offset, const float* values) {
  const int64_t at = RegionElements(layer, kv) + offset;
  uint8_t* dst = data_.get() + at * element_bytes_;
  switch (dtype_) {
    case KvCacheDtype::kBF16: {
      auto* out = reinterpret_cast<uint16_t*>(dst);
      for (int d = 0; d < head_dim_; ++d) out[d] = F32ToBf16(values[d]);
      return;
    }
    case KvCacheDtype::kInt8: {
      float amax = 0.0f;
      for (int d = 0; d < head_dim_; ++d) amax = std::max(amax, std::fabs(values[d]));
      const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
      scales_[at / head_dim_] = scale;
      auto* out = reinterpret_cast<int8_t*>(dst);
      for (int d = 0; d < head_dim_; ++d) {
        out[d] = static_cast<int8_t>(std::clamp(std::nearbyint(values[d] / scale), -127.0f, 127.0f));
      }
      return;
    }
    default:
      std::memcpy(dst, values, static_cast<size_t>(head_dim_) * 4);
  }
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
