// Turns a wire StepRequest into a backend step, then samples and scores on the result: the worker's one job per step.
#pragma once

#include "absl/status/statusor.h"
#include "gemma/worker/v1/worker.pb.h"
#include "shard/runtime/backend.h"

namespace gemma {

// InvalidArgument for malformed requests (nothing runs); backend errors pass through.
absl::StatusOr<worker::v1::StepResponse> RunStep(Backend& backend, const worker::v1::StepRequest& request);

}  // namespace gemma
