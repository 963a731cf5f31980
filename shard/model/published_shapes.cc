#include "shard/model/published_shapes.h"

namespace gemma {
namespace {

LayerAttention FamilyPattern(ModelFamily family, int layer) {
  if (family == ModelFamily::kGemma2) return layer % 2 == 0 ? LayerAttention::kLocal : LayerAttention::kGlobal;
  return (layer + 1) % 6 == 0 ? LayerAttention::kGlobal : LayerAttention::kLocal;
}

// What every published shape states: its family and its dimensions.
ModelConfig Dimensions(ModelFamily family, int vocab, int hidden, int ffn, int layers, int heads, int kv_heads,
                       int head_dim, int context, float query_scalar) {
  ModelConfig c;
  c.family = family;
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.intermediate_size = ffn;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.max_position_embeddings = context;
  c.query_pre_attn_scalar = query_scalar;
  return c;
}

ModelConfig Gemma2(int hidden, int ffn, int layers, int heads, int kv_heads, int head_dim, float query_scalar) {
  ModelConfig c = Dimensions(ModelFamily::kGemma2, 256000, hidden, ffn, layers, heads, kv_heads, head_dim, 8192,
                             query_scalar);
  c.attn_logit_softcap = 50.0f;
  c.final_logit_softcap = 30.0f;
  c.sliding_window = 4096;
  SetNumLayers(layers, &c);
  return c;
}

// The 1B is text-only (Gemma3ForCausalLM, vocab 262144); 4B and up are multimodal, whose text_config leaves the
// vocabulary at Gemma3TextConfig's default 262208 (the tokenizer's 262144 plus image tokens).
ModelConfig Gemma3(int hidden, int ffn, int layers, int heads, int kv_heads, int head_dim, float query_scalar,
                   bool multimodal) {
  ModelConfig c = Dimensions(ModelFamily::kGemma3, multimodal ? 262208 : 262144, hidden, ffn, layers, heads,
                             kv_heads, head_dim, multimodal ? 131072 : 32768, query_scalar);
  c.rope_theta = 1000000.0f;
  c.rope_local_theta = 10000.0f;
  c.rope_global_scale = multimodal ? 8.0f : 1.0f;
  c.sliding_window = multimodal ? 1024 : 512;
  c.extra_eos_ids = {106};
  SetNumLayers(layers, &c);
  if (multimodal) {
    c.tensor_prefix = "language_model.model.";
    c.ignored_tensor_prefixes = {"vision_tower.", "multi_modal_projector."};
  }
  return c;
}

}  // namespace

void SetNumLayers(int layers, ModelConfig* c) {
  c->num_layers = layers;
  if (c->family == ModelFamily::kGemma1) return;
  c->layer_attention.clear();
  for (int i = 0; i < layers; ++i) c->layer_attention.push_back(FamilyPattern(c->family, i));
}

const std::vector<std::pair<std::string, ModelConfig>>& PublishedGemma23Shapes() {
  static const auto* shapes = new std::vector<std::pair<std::string, ModelConfig>>{
      {"gemma2-2b", Gemma2(2304, 9216, 26, 8, 4, 256, 256)},
      {"gemma2-9b", Gemma2(3584, 14336, 42, 16, 8, 256, 256)},
      {"gemma2-27b", Gemma2(4608, 36864, 46, 32, 16, 128, 144)},
      {"gemma3-1b", Gemma3(1152, 6912, 26, 4, 1, 256, 256, false)},
      {"gemma3-4b", Gemma3(2560, 10240, 34, 8, 4, 256, 256, true)},
      {"gemma3-12b", Gemma3(3840, 15360, 48, 16, 8, 256, 256, true)},
      {"gemma3-27b", Gemma3(5376, 21504, 62, 32, 16, 128, 168, true)},
  };
  return *shapes;
}

absl::StatusOr<ModelConfig> ShapeNamed(const std::string& name) {
  if (name == "tiny") return TinyShape();
  if (name == "2b") return Gemma2BShape();
  if (name == "7b") return Gemma7BShape();
  for (const auto& [n, config] : PublishedGemma23Shapes()) {
    if (n == name) return config;
  }
  return absl::InvalidArgumentError("shape \"" + name + "\" is invalid; allowed: " + ShapeNames(", "));
}

std::string ShapeNames(const std::string& separator) {
  std::string out = "tiny" + separator + "2b" + separator + "7b";
  for (const auto& [name, _] : PublishedGemma23Shapes()) out += separator + name;
  return out;
}

}  // namespace gemma
