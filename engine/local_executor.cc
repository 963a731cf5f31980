#include "engine/local_executor.h"

#include "shard/runtime/step_runner.h"

namespace gemma {

absl::StatusOr<std::vector<RowResult>> LocalExecutor::Execute(std::span<const StepRow> rows) {
  return RunRows(*backend_, rows, &history_, adapters_);
}

void LocalExecutor::Release(std::span<const uint64_t> ids) {
  for (uint64_t id : ids) history_.Release(id);
}

EngineOptions LocalExecutor::EngineOptionsFor(SchedulerLimits limits, bool prefix_cache) const {
  EngineOptions o;
  o.limits = limits;
  // The backend's adapter slots (a GPU's), as a worker reports them to a router.
  o.limits.max_adapters_per_step = backend_->lora_capacity().max_per_step;
  o.num_blocks = backend_->num_kv_blocks();
  o.block_size = backend_->kv_block_size();
  o.kv_window = backend_->kv_window();
  o.prefix_cache = prefix_cache;
  return o;
}

}  // namespace gemma
