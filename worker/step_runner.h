// Turns a wire StepRequest into a backend step, then samples and scores on the result: the worker's one job per step.
#pragma once

#include "absl/status/statusor.h"
#include "gemma/worker/v1/worker.pb.h"
#include "shard/backend.h"
#include "shard/sequence_history.h"

namespace gemma {

// InvalidArgument for malformed requests (nothing runs); backend errors pass through. With `history`, the
// request's released sequences are dropped from it and penalized rows are recorded there (FailedPrecondition,
// nothing run, when it lacks one: see RunRows).
absl::StatusOr<worker::v1::StepResponse> RunStep(Backend& backend, const worker::v1::StepRequest& request,
                                                 SequenceHistory* history = nullptr);

}  // namespace gemma
