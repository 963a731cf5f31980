// Gemma model hyper-parameters, parsed and validated from a Hugging Face config.json.
#pragma once

#include "absl/strings/string_view.h"
#include <cstdint>
#include <string>


#include "absl/status/statusor.h"

namespace gemma {

// Plain value type; thread-compatible.
struct ModelConfig {
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int max_position_embeddings = 0;
  float rms_norm_eps = 1e-6f;
  float rope_theta = 10000.0f;
  int bos_id = 2;
  int eos_id = 1;
  int pad_id = 0;

  int q_dim() const { return num_heads * head_dim; }
  int kv_dim() const { return num_kv_heads * head_dim; }
  int heads_per_kv() const { return num_heads / num_kv_heads; }
  // Parameters of the checkpoint (embedding counted once: it is tied).
  int64_t ParameterCount() const;
  // "gemma-2b" / "gemma-7b" when the shape is one Google published, else "custom".
  std::string ShapeName() const;
  std::string DebugString() const;
};

// Parses config.json text. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view source);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

// The published shapes (gemma-2b and gemma-1.1-2b-it share one, as do the 7Bs).
ModelConfig Gemma2BShape();
ModelConfig Gemma7BShape();
// A small shape for tests and the embedded default model.
ModelConfig TinyShape();

}  // namespace gemma
