// Runs the engine's steps in this process, on a backend (any device, or the leader of a local TP group).
#pragma once

#include "engine/engine.h"
#include "engine/step_executor.h"
#include "shard/runtime/adapter_store.h"
#include "shard/runtime/backend.h"
#include "shard/runtime/sequence_history.h"

namespace gemma {

// Not thread-safe: uses the backend exclusively during Execute.
class LocalExecutor : public StepExecutor {
 public:
  // Keeps the penalty history of up to `max_histories` sequences (as a worker does).
  // Rows naming an adapter find it in `adapters` (null: none can).
  explicit LocalExecutor(Backend* backend, size_t max_histories = SequenceHistory::kDefaultMaxSequences,
                         AdapterStore* adapters = nullptr)
      : backend_(backend), history_(max_histories), adapters_(adapters) {}
  absl::StatusOr<std::vector<RowResult>> Execute(std::span<const StepRow> rows) override;
  void Release(std::span<const uint64_t> ids) override;
  // Engine options sized to the backend's KV pool.
  EngineOptions EngineOptionsFor(SchedulerLimits limits, bool prefix_cache = true) const;

 private:
  Backend* backend_;
  SequenceHistory history_;
  AdapterStore* adapters_;
};

}  // namespace gemma
