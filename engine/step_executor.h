// Where a planned step runs: in this process on a backend (or a local tensor-parallel group), or on a remote
// worker group over its RPC. The engine sees only this interface.
#pragma once

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
  virtual absl::StatusOr<std::vector<RowResult>> Execute(std::span<const StepRow> rows) = 0;
};

}  // namespace gemma
