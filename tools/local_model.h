// A model opened for local use by the gemma command: weights, CPU backend and tokenizer.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "router/tokenizer/tokenizer.h"
#include "shard/backend.h"
#include "shard/model_weights.h"

namespace gemma {

struct LocalModel {
  std::shared_ptr<const ModelWeights> weights;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Tokenizer> tokenizer;  // null when the checkpoint has no tokenizer.model
};

// Opens `dir` (the embedded default when empty): weights and tokenizer; no backend yet.
absl::StatusOr<LocalModel> OpenLocalModel(const std::string& dir);
// Adds a CPU backend whose KV cache holds `kv_tokens` positions.
absl::Status AttachBackend(LocalModel& model, int64_t kv_tokens);

// Sets the number of compute threads (0: all cores).
void SetThreads(int threads);

}  // namespace gemma
