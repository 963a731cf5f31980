// Runs the engine's steps in this process, on a backend (any device, or the leader of a local TP group).
#pragma once

#include "engine/engine.h"
#include "engine/step_executor.h"
#include "shard/runtime/backend.h"

namespace gemma {

// Not thread-safe: uses the backend exclusively during Execute.
class LocalExecutor : public StepExecutor {
 public:
  explicit LocalExecutor(Backend* backend) : backend_(backend) {}
  absl::StatusOr<std::vector<RowResult>> Execute(std::span<const StepRow> rows) override;
  // Engine options sized to the backend's KV pool.
  EngineOptions EngineOptionsFor(SchedulerLimits limits, bool prefix_cache = true) const;

 private:
  Backend* backend_;
};

}  // namespace gemma
