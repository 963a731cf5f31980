#include "shard/cuda/memory_plan.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gemma::cuda {

std::string HumanBytes(int64_t bytes) {
  if (bytes >= (int64_t{1} << 30)) return absl::StrFormat("%.1f GiB", static_cast<double>(bytes) / (1 << 30));
  return absl::StrCat((bytes + (1 << 20) - 1) >> 20, " MiB");
}

absl::StatusOr<KvPlan> PlanKvCache(DeviceMemory& memory, const KvPlanRequest& r) {
  if (!(r.fraction >= 0 && r.fraction <= 1) || std::isnan(r.fraction)) {
    return absl::InvalidArgumentError(absl::StrCat("--gpu_memory_fraction ", r.fraction, " is invalid; allowed: (0, 1]"));
  }
  if (r.block_bytes <= 0) return absl::InvalidArgumentError("a KV block of no bytes");
  auto reading = memory.Read();
  if (!reading.ok()) return reading.status();
  KvPlan plan;
  plan.total_bytes = reading->total_bytes;
  plan.used_bytes = reading->total_bytes - reading->free_bytes;
  if (r.fraction == 0) {
    const int64_t need = r.fixed_blocks * r.block_bytes + r.reserve_bytes;
    if (r.fixed_blocks < 1) return absl::InvalidArgumentError("a KV cache of no blocks");
    if (need > reading->free_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the KV cache (", r.fixed_blocks, " blocks) needs ", HumanBytes(need), " of device memory with ",
          HumanBytes(r.reserve_bytes), " kept for decode graphs; ", reading->free_bytes >> 20, " MiB of ",
          reading->total_bytes >> 20, " MiB are free after the weights and the largest step (", r.limits,
          "); allowed: a smaller --kv_cache_mb, or --gpu_memory_fraction to size it from the device"));
    }
    plan.blocks = r.fixed_blocks;
    return plan;
  }
  plan.budget_bytes = static_cast<int64_t>(r.fraction * static_cast<double>(reading->total_bytes));
  const int64_t room = std::min(plan.budget_bytes - plan.used_bytes, reading->free_bytes) - r.reserve_bytes;
  plan.blocks = std::max<int64_t>(0, room / r.block_bytes);
  if (plan.blocks < r.min_blocks) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the KV cache gets ", HumanBytes(std::max<int64_t>(0, room)), ": --gpu_memory_fraction ", r.fraction, " of ",
        HumanBytes(reading->total_bytes), " is ", HumanBytes(plan.budget_bytes), ", of which ",
        HumanBytes(plan.used_bytes), " is already used (weights, buffers for the largest step of ", r.limits,
        ", runtime and other processes) and ", HumanBytes(r.reserve_bytes),
        " is kept for decode graphs; one sequence of the longest context needs ", HumanBytes(r.min_blocks * r.block_bytes),
        " (", r.min_blocks, " blocks). Allowed: a larger --gpu_memory_fraction, a smaller --max_model_len, "
        "--max_tokens_per_step or --max_batch_size, or more GPUs (--tp)"));
  }
  return plan;
}

}  // namespace gemma::cuda
