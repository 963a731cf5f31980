// One step of the step protocol on a backend: validates the rows, runs the forward pass, then samples and scores.
// The worker runs it for the Worker RPC, the local executor for the gemma command: one implementation for both.
#pragma once

#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/step_protocol.h"
#include "shard/runtime/backend.h"

namespace gemma {

// InvalidArgument naming the sequence for a malformed row (nothing runs); backend errors pass through. Results
// are in row order, one per row.
absl::StatusOr<std::vector<RowResult>> RunRows(Backend& backend, std::span<const StepRow> rows);

}  // namespace gemma
