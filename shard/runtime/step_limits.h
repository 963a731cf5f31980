// The largest step a worker accepts: what a GPU's memory is planned for at start (no later step allocates), what
// the worker reports to routers, and what their schedulers keep to. A step beyond them is refused before it runs.
#pragma once

#include <span>

#include "absl/status/status.h"
#include "shard/model/model_config.h"
#include "shard/runtime/backend.h"

namespace gemma {

struct StepLimits {
  int max_tokens = 2048;     // tokens in one step: decodes (one each) plus prompt chunks
  int max_sequences = 256;   // sequences in one step
  int max_context = 0;       // positions of one sequence; 0: the model's context (max_position_embeddings)

  // max_context resolved against the model (0 or more than the model's context become the model's).
  StepLimits Resolved(const ModelConfig& config) const;
};

// InvalidArgument saying which limit the step passes and what is allowed. `limits` resolved.
absl::Status CheckStepLimits(std::span<const SequenceStep> batch, const StepLimits& limits);

}  // namespace gemma
