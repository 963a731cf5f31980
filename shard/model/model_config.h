// Gemma model hyper-parameters, parsed and validated from a Hugging Face config.json.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gemma {

// Which published architecture a checkpoint is; decides the layer's shape (sandwich norms, QK-norm).
enum class ModelFamily { kGemma1, kGemma2, kGemma3 };
const char* ModelFamilyName(ModelFamily family);

// Which keys a layer's queries see: every earlier position, or the last `sliding_window` ones.
enum class LayerAttention : uint8_t { kGlobal, kLocal };

// How a pre-quantized checkpoint stores its projection matrices: config.json's quantization_config, in the
// layouts vLLM reads. 4-bit, W4A16, a scale and a zero per group of input columns:
//  GPTQ (AutoGPTQ): qweight int32 [in / 8, out], eight inputs per word, lowest bits first; qzeros int32
//        [in / group, out / 8], eight outputs per word, storing zero - 1 (checkpoint_format "gptq"; "gptq_v2"
//        stores the zero itself); scales [in / group, out]; w = (q - zero) * scale.
//  AWQ (AutoAWQ, version "gemm"): qweight int32 [in, out / 8] and qzeros int32 [in / group, out / 8], eight
//        outputs per word in the order 0, 2, 4, 6, 1, 3, 5, 7; scales [in / group, out]; the same formula.
// And FP8 in the compressed-tensors layout (llm-compressor's "float-quantized" format): weight float8_e4m3fn
// [out, in] and weight_scale [out, 1] (strategy "channel") or [1] ("tensor"); w = e4m3 * scale. Modules the
// config ignores keep a plain weight. Activation and KV-cache schemes are not applied: activations stay f32/bf16.
struct CheckpointQuantization {
  enum class Method : uint8_t { kNone, kGptq, kAwq, kFp8 };
  Method method = Method::kNone;
  int group_size = 0;           // 4-bit: 32, 64 or 128
  bool zeros_minus_one = false;  // GPTQ's original format
};
const char* QuantizationMethodName(CheckpointQuantization::Method method);

// Plain value type; thread-compatible.
struct ModelConfig {
  ModelFamily family = ModelFamily::kGemma1;
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
  // Further end-of-sequence ids (Gemma 3's -it checkpoints list [1, 106]: <eos> and <end_of_turn>).
  std::vector<int> extra_eos_ids;

  // Gemma 2 and 3; the defaults are Gemma 1's computation.
  float query_pre_attn_scalar = 0;    // queries scaled by its -0.5 power; 0: head_dim
  float attn_logit_softcap = 0;       // scores -> cap * tanh(scores / cap); 0: none
  float final_logit_softcap = 0;      // the same on the output logits; 0: none
  int sliding_window = 0;             // keys a local layer's query sees, itself included; 0: no local layers
  std::vector<LayerAttention> layer_attention;  // [num_layers]; empty: every layer global
  float rope_local_theta = 0;         // Gemma 3's RoPE base on local layers; 0: rope_theta
  float rope_global_scale = 1;        // linear RoPE scaling (positions divided by it) on global layers
  // Where the text model's tensors sit: "model." or, in Gemma 3's multimodal layout, "language_model.model.".
  std::string tensor_prefix = "model.";
  // Tensors of a multimodal checkpoint that a text-only server leaves unread.
  std::vector<std::string> ignored_tensor_prefixes;
  // Projection matrices stored quantized (the embedding stays as it is); method kNone: plain tensors.
  CheckpointQuantization quantization;

  bool sandwich_norms() const { return family != ModelFamily::kGemma1; }
  bool qk_norm() const { return family == ModelFamily::kGemma3; }
  bool IsLocal(int layer) const {
    return !layer_attention.empty() && layer_attention[layer] == LayerAttention::kLocal;
  }
  float RopeTheta(int layer) const { return IsLocal(layer) && rope_local_theta > 0 ? rope_local_theta : rope_theta; }
  float RopeScale(int layer) const { return IsLocal(layer) ? 1.0f : rope_global_scale; }
  float QueryScalar() const { return query_pre_attn_scalar > 0 ? query_pre_attn_scalar : static_cast<float>(head_dim); }

  int q_dim() const { return num_heads * head_dim; }
  int kv_dim() const { return num_kv_heads * head_dim; }
  int heads_per_kv() const { return num_heads / num_kv_heads; }
  // Parameters of the checkpoint (embedding counted once: it is tied).
  int64_t ParameterCount() const;
  // "gemma-2b", "gemma2-9b", "gemma3-4b", ... when the shape is one Google published, else "custom".
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
