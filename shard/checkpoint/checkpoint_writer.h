// Writes checkpoints in the Hugging Face Gemma layout: random-weight models (make-tiny) and re-encoded copies.
#pragma once

#include "absl/strings/string_view.h"
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "shard/model/model_config.h"
#include "shard/checkpoint/safetensors.h"

namespace gemma {

// A tensor with its data: raw little-endian bytes of `dtype`.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  absl::string_view bytes;
};

// Writes one safetensors file (data in the given order).
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata);

// config.json text for `config`, as the Hub's configs of its family and layout spell it.
std::string ModelConfigJson(const ModelConfig& config);

// Every tensor name of a Gemma checkpoint with its shape, in state-dict order.
std::vector<std::pair<std::string, std::vector<int64_t>>> GemmaTensorShapes(const ModelConfig& config);

struct RandomCheckpointOptions {
  uint64_t seed = 1;
  DType dtype = DType::kBF16;  // BF16, F16 or F32
  // Synced and dropped from the page cache once written, so that a CPU backend maps it back in huge folios; a
  // caller that copies it straight to a GPU keeps it cached instead.
  bool drop_from_page_cache = true;
};

// Writes config.json, model.safetensors and tokenizer.model (`tokenizer_bytes`)
// into `dir` (created if needed). Weights are N(0, std) with std 0.02 for the
// embedding, 0.1 * sqrt(128 / fan_in) for projections (so each layer changes the
// residual stream at any width) and 0.1 for norm weights (applied as 1 + w).
// Deterministic for a seed; shows progress on a terminal.
absl::Status WriteRandomCheckpoint(const std::string& dir, const ModelConfig& config,
                                   const RandomCheckpointOptions& options, const std::string& tokenizer_bytes);

}  // namespace gemma
