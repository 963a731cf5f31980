#include "shard/runtime/step_limits.h"

#include <cstdint>

#include "absl/strings/str_cat.h"

namespace gemma {

StepLimits StepLimits::Resolved(const ModelConfig& config) const {
  StepLimits r = *this;
  if (r.max_context <= 0 || r.max_context > config.max_position_embeddings) r.max_context = config.max_position_embeddings;
  return r;
}

absl::Status CheckStepLimits(std::span<const SequenceStep> batch, const StepLimits& limits) {
  if (static_cast<int64_t>(batch.size()) > limits.max_sequences) {
    return absl::InvalidArgumentError(absl::StrCat("the step has ", batch.size(), " sequences; this worker takes at most ",
                                                   limits.max_sequences, " (--max_batch_size)"));
  }
  int64_t tokens = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceStep& s = batch[i];
    tokens += static_cast<int64_t>(s.tokens.size());
    const int64_t end = static_cast<int64_t>(s.start_pos) + static_cast<int64_t>(s.tokens.size());
    if (end > limits.max_context) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, " reaches position ", end,
                                                     "; this worker takes contexts of at most ", limits.max_context,
                                                     " positions (--max_model_len)"));
    }
  }
  if (tokens > limits.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("the step has ", tokens, " tokens; this worker takes at most ",
                                                   limits.max_tokens, " per step (--max_tokens_per_step)"));
  }
  return absl::OkStatus();
}

}  // namespace gemma
