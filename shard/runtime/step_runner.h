// One step of the step protocol on a backend: validates the rows, runs the forward pass, then samples and scores.
// The worker runs it for the Worker RPC, the local executor for the gemma command: one implementation for both.
#pragma once

#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/step_protocol.h"
#include "shard/runtime/adapter_store.h"
#include "shard/runtime/backend.h"
#include "shard/runtime/sequence_history.h"

namespace gemma {

// InvalidArgument naming the sequence for a malformed row (nothing runs); backend errors pass through. Results
// are in row order, one per row.
//
// Penalties: with `history`, every row of a penalized sequence (prompt chunks too) is recorded there and sampling
// reads the sequence's tokens from it; a row's penalty_history, when present, replaces what it holds.
// FailedPrecondition (nothing runs) when it lacks the tokens before a row's start_pos: the caller resends the step
// with full histories. Without `history`, each sampled row's penalty_history is the whole history.
//
// Adapters: a row's adapter id is looked up in `adapters` (InvalidArgument naming the sequence, nothing run, when
// it is not there or there is no store).
absl::StatusOr<std::vector<RowResult>> RunRows(Backend& backend, std::span<const StepRow> rows,
                                               SequenceHistory* history = nullptr, AdapterStore* adapters = nullptr);

}  // namespace gemma
