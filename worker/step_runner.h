// Turns a wire StepRequest into a backend step, then samples and scores on the result: the worker's one job per step.
#pragma once

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "gemma/worker/v1/worker.pb.h"
#include "shard/runtime/adapter_store.h"
#include "shard/runtime/backend.h"
#include "shard/runtime/sequence_history.h"
#include "shard/runtime/step_limits.h"

namespace gemma {

// Each sequence's token drawn by the last step that ran (for rows marked token_from_last_step).
using LastDraws = absl::flat_hash_map<uint64_t, int32_t>;

// InvalidArgument for malformed requests (nothing runs), a row taking a token the last step did not draw among
// them; backend errors pass through. `last_draws` may be null when no row takes its token from the last step.
// With `history`, the request's released sequences are dropped from it and penalized rows are recorded there
// (FailedPrecondition, nothing run, when it lacks one: see RunRows). With `limits` (resolved), a step beyond them
// is refused (InvalidArgument naming the worker flag) before anything else, so no backend and no follower sees it.
// Rows' adapter ids are looked up in `adapters`.
absl::StatusOr<worker::v1::StepResponse> RunStep(Backend& backend, const worker::v1::StepRequest& request,
                                                 const LastDraws* last_draws = nullptr,
                                                 SequenceHistory* history = nullptr,
                                                 const StepLimits* limits = nullptr,
                                                 AdapterStore* adapters = nullptr);

}  // namespace gemma
