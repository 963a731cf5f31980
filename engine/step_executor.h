// Where a planned step runs: in this process on a backend (or a local tensor-parallel group), or on a remote
// worker group over its RPC. The engine sees only this interface.
#pragma once

#include <future>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/step_protocol.h"

namespace gemma {

class StepExecutor {
 public:
  virtual ~StepExecutor() = default;
  // Runs one step: one result per row, in row order. InvalidArgument: a row is malformed and nothing ran; any
  // other error: the executor has failed.
  //
  // FailedPrecondition: the executor lacks the penalty history of a row's sequence (it evicted it), and nothing
  // ran; the engine sends the step again with every penalized row's penalty_history in full.
  virtual absl::StatusOr<std::vector<RowResult>> Execute(std::span<const StepRow> rows) = 0;

  // Overlapped scheduling, for executors whose steps run elsewhere (a remote group). Start sends a step and
  // returns without waiting for its answer; with `after_previous` it runs after the step started before it, and
  // its rows marked token_from_last_step take that step's draws. Everything a row points to is read before
  // Start returns.
  virtual bool CanStart() const { return false; }
  virtual std::future<absl::StatusOr<std::vector<RowResult>>> Start(std::span<const StepRow> rows,
                                                                     bool after_previous) {
    std::promise<absl::StatusOr<std::vector<RowResult>>> p;
    p.set_value(absl::UnimplementedError("this executor runs steps one at a time"));
    return p.get_future();
  }

  // The engine removed these sequences (finished, cancelled, failed): what the executor keeps for them (penalty
  // history) can go. A remote executor tells its worker with the next step.
  virtual void Release(std::span<const uint64_t> ids) {}
};

}  // namespace gemma
