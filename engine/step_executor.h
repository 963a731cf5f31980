// Where a planned step runs: in this process on a backend (or a local tensor-parallel group), or on a remote
// worker group over its RPC. The engine sees only this interface.
#pragma once

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
  // The engine removed these sequences (finished, cancelled, failed): what the executor keeps for them (penalty
  // history) can go. A remote executor tells its worker with the next step.
  virtual void Release(std::span<const uint64_t> ids) {}
};

}  // namespace gemma
