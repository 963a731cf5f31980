#include "shard/model/model_config.h"

#include <algorithm>
#include <fstream>
#include <functional>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"
#include "shard/model/published_shapes.h"

namespace gemma {
namespace {

using nlohmann::json;

absl::Status ConfigError(absl::string_view source, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
}

// Reads an integer field in [min, max]: the upper bound keeps later size arithmetic far from overflow.
absl::Status ReadInt(const json& j, absl::string_view source, const char* key, int64_t min, int64_t max, int* out,
                     bool required = true) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (!required) return absl::OkStatus();
    return ConfigError(source, absl::StrCat("missing required field \"", key, "\""));
  }
  if (!it->is_number_integer()) {
    return ConfigError(source, absl::StrCat("field \"", key, "\" must be an integer"));
  }
  const int64_t v = it->get<int64_t>();
  if (v < min || v > max) {
    return ConfigError(source, absl::StrCat("field \"", key, "\" is ", v, "; allowed ", min, "..", max));
  }
  *out = static_cast<int>(v);
  return absl::OkStatus();
}

absl::Status ReadFloat(const json& j, absl::string_view source, const char* key, float* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return ConfigError(source, absl::StrCat("field \"", key, "\" must be a number"));
  *out = it->get<float>();
  return absl::OkStatus();
}

absl::Status CheckActivation(const json& j, absl::string_view source) {
  // Hub configs of Gemma 1 carry "hidden_act": "gelu" and, newer ones, also
  // "hidden_activation": "gelu_pytorch_tanh"; Gemma always means tanh GELU.
  auto it = j.find("hidden_activation");
  if (it != j.end() && !it->is_null()) {
    if (!it->is_string() || (it->get<std::string>() != "gelu_pytorch_tanh" && it->get<std::string>() != "gelu_tanh")) {
      return ConfigError(source, absl::StrCat("hidden_activation ", it->dump(),
                                              " is not supported; allowed: \"gelu_pytorch_tanh\" (tanh GELU)"));
    }
    return absl::OkStatus();
  }
  auto act = j.find("hidden_act");
  if (act != j.end() && !act->is_null()) {
    const bool ok = act->is_string() && (act->get<std::string>() == "gelu" ||
                                         act->get<std::string>() == "gelu_pytorch_tanh");
    if (!ok) {
      return ConfigError(source, absl::StrCat("hidden_act ", act->dump(),
                                              " is not supported; allowed: \"gelu\" or \"gelu_pytorch_tanh\""));
    }
  }
  return absl::OkStatus();
}

absl::Status Validate(const ModelConfig& c, absl::string_view source) {
  auto positive = [&](int v, const char* name) -> absl::Status {
    if (v <= 0) return ConfigError(source, absl::StrCat("\"", name, "\" must be positive, got ", v));
    return absl::OkStatus();
  };
  for (auto [v, name] : {std::pair{c.vocab_size, "vocab_size"}, {c.hidden_size, "hidden_size"},
                         {c.intermediate_size, "intermediate_size"}, {c.num_layers, "num_hidden_layers"},
                         {c.num_heads, "num_attention_heads"}, {c.num_kv_heads, "num_key_value_heads"},
                         {c.head_dim, "head_dim"}, {c.max_position_embeddings, "max_position_embeddings"}}) {
    RETURN_IF_ERROR(positive(v, name));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return ConfigError(source, absl::StrCat("num_attention_heads (", c.num_heads,
                                            ") must be a multiple of num_key_value_heads (", c.num_kv_heads, ")"));
  }
  if (c.head_dim % 2 != 0) return ConfigError(source, absl::StrCat("head_dim must be even, got ", c.head_dim));
  if (!(c.rms_norm_eps > 0.0f)) return ConfigError(source, "rms_norm_eps must be positive");
  if (!(c.rope_theta > 1.0f)) return ConfigError(source, "rope_theta must be greater than 1");
  if (!c.layer_attention.empty() && static_cast<int>(c.layer_attention.size()) != c.num_layers) {
    return ConfigError(source, "the layer pattern must name every layer");
  }
  std::vector<std::pair<int, const char*>> ids = {{c.bos_id, "bos_token_id"}, {c.eos_id, "eos_token_id"},
                                                   {c.pad_id, "pad_token_id"}};
  for (int id : c.extra_eos_ids) ids.push_back({id, "eos_token_id"});
  for (auto [v, name] : ids) {
    if (v < 0 || v >= c.vocab_size) {
      return ConfigError(source, absl::StrCat("\"", name, "\" (", v, ") is outside the vocabulary (", c.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}


// Reads a required (or optional, null meaning none) positive number.
absl::Status ReadPositive(const json& j, absl::string_view source, const char* key, bool required, bool null_ok,
                          float* out) {
  auto it = j.find(key);
  if (it == j.end()) {
    if (!required) return absl::OkStatus();
    return ConfigError(source, absl::StrCat("missing required field \"", key, "\"",
                                            null_ok ? " (null for none)" : ""));
  }
  if (it->is_null()) {
    if (null_ok) {
      *out = 0;
      return absl::OkStatus();
    }
    return ConfigError(source, absl::StrCat("field \"", key, "\" is null; allowed: a positive number"));
  }
  if (!it->is_number() || !(it->get<double>() > 0)) {
    return ConfigError(source, absl::StrCat("field \"", key, "\" is ", it->dump(), "; allowed: a positive number",
                                            null_ok ? " or null" : ""));
  }
  *out = it->get<float>();
  return absl::OkStatus();
}

// eos_token_id is one id (Gemma 1 and 2) or a list (Gemma 3 -it: [1, 106]).
absl::Status ReadEosIds(const json& j, absl::string_view source, ModelConfig* c) {
  auto it = j.find("eos_token_id");
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (it->is_number_integer()) return ReadInt(j, source, "eos_token_id", 0, 1 << 22, &c->eos_id, false);
  const bool list = it->is_array() && !it->empty() &&
                    std::all_of(it->begin(), it->end(), [](const json& v) { return v.is_number_integer(); });
  if (!list) {
    return ConfigError(source, absl::StrCat("field \"eos_token_id\" is ", it->dump(),
                                            "; allowed: a token id or a non-empty list of token ids"));
  }
  c->eos_id = (*it)[0].get<int>();
  c->extra_eos_ids.clear();
  for (size_t i = 1; i < it->size(); ++i) c->extra_eos_ids.push_back((*it)[i].get<int>());
  return absl::OkStatus();
}

// Which layers are local: layer_types when given (transformers 4.53+), else Gemma 2's alternation (layer 0
// local) or Gemma 3's sliding_window_pattern (layer i global when (i + 1) % pattern == 0); both given must agree.
absl::Status ReadLayerPattern(const json& j, absl::string_view source, ModelConfig* c) {
  std::vector<LayerAttention> from_pattern(c->num_layers, LayerAttention::kLocal);
  bool have_pattern = false;
  if (c->family == ModelFamily::kGemma2) {
    for (int i = 1; i < c->num_layers; i += 2) from_pattern[i] = LayerAttention::kGlobal;
    have_pattern = true;
  } else if (auto it = j.find("sliding_window_pattern"); it != j.end() && !it->is_null()) {
    int pattern = 0;
    RETURN_IF_ERROR(ReadInt(j, source, "sliding_window_pattern", 1, 1 << 20, &pattern));
    for (int i = 0; i < c->num_layers; ++i) {
      if ((i + 1) % pattern == 0) from_pattern[i] = LayerAttention::kGlobal;
    }
    have_pattern = true;
  }
  auto types = j.find("layer_types");
  if (types == j.end() || types->is_null()) {
    if (!have_pattern) {
      return ConfigError(source, "missing both \"layer_types\" and \"sliding_window_pattern\"; one must say which "
                                 "layers use the sliding window");
    }
    c->layer_attention = from_pattern;
    return absl::OkStatus();
  }
  if (!types->is_array() || static_cast<int>(types->size()) != c->num_layers) {
    return ConfigError(source, absl::StrCat("field \"layer_types\" must be a list of num_hidden_layers (",
                                            c->num_layers, ") entries"));
  }
  c->layer_attention.clear();
  for (size_t i = 0; i < types->size(); ++i) {
    const json& t = (*types)[i];
    if (t == "sliding_attention") {
      c->layer_attention.push_back(LayerAttention::kLocal);
    } else if (t == "full_attention") {
      c->layer_attention.push_back(LayerAttention::kGlobal);
    } else {
      return ConfigError(source, absl::StrCat("layer_types[", i, "] is ", t.dump(),
                                              "; allowed: \"sliding_attention\", \"full_attention\""));
    }
  }
  if (have_pattern && c->layer_attention != from_pattern) {
    const char* other = c->family == ModelFamily::kGemma2 ? "Gemma 2's alternation (layer 0 local)"
                                                          : "\"sliding_window_pattern\"";
    return ConfigError(source, absl::StrCat("\"layer_types\" contradicts ", other));
  }
  return absl::OkStatus();
}

// Gemma 3's global layers may scale RoPE linearly; nothing else is published.
absl::Status ReadRopeScaling(const json& j, absl::string_view source, ModelConfig* c) {
  auto it = j.find("rope_scaling");
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (c->family != ModelFamily::kGemma3) {
    return ConfigError(source, absl::StrCat("rope_scaling is not supported for ", ModelFamilyName(c->family),
                                            "; allowed: null"));
  }
  auto type = it->find("rope_type");
  if (type == it->end()) type = it->find("type");
  auto factor = it->find("factor");
  if (!it->is_object() || type == it->end() || *type != "linear" || factor == it->end() || !factor->is_number() ||
      !(factor->get<double>() >= 1)) {
    return ConfigError(source, absl::StrCat("rope_scaling ", it->dump(),
                                            " is not supported; allowed: null or {\"rope_type\": \"linear\", "
                                            "\"factor\": a number >= 1}"));
  }
  c->rope_global_scale = factor->get<float>();
  return absl::OkStatus();
}

// Newer transformers save RoPE settings as `rope_parameters` (per layer kind for Gemma 3: "full_attention",
// "sliding_attention"), not as rope_theta / rope_local_base_freq / rope_scaling: the same settings under the
// older keys, so a checkpoint reads the same whichever release saved it. A key in both forms must agree.
absl::StatusOr<json> WithLegacyRopeKeys(const json& j, absl::string_view source) {
  auto it = j.find("rope_parameters");
  if (it == j.end() || it->is_null()) return j;
  const std::string allowed =
      "allowed: {\"rope_type\": \"default\" or \"linear\", \"rope_theta\": a number > 1, \"factor\": a number >= 1 "
      "(linear)}, or such an object under \"full_attention\" and \"sliding_attention\"";
  if (!it->is_object()) return ConfigError(source, absl::StrCat("rope_parameters ", it->dump(), " is invalid; ", allowed));
  json out = j;
  out.erase("rope_parameters");
  auto set = [&](const char* key, const json& value) -> absl::Status {
    if (auto old = j.find(key); old != j.end() && !old->is_null() && *old != value) {
      return ConfigError(source, absl::StrCat(key, " ", old->dump(), " contradicts rope_parameters ", it->dump()));
    }
    out[key] = value;
    return absl::OkStatus();
  };
  // One layer kind's parameters: its base, and (global layers) linear scaling.
  auto read = [&](const json& p, const char* theta_key, bool scaled) -> absl::Status {
    auto theta = p.find("rope_theta");
    auto type = p.find("rope_type");
    const std::string kind = type == p.end() ? "default" : type->is_string() ? type->get<std::string>() : "";
    if (!p.is_object() || theta == p.end() || !theta->is_number() || (kind != "default" && kind != "linear") ||
        (kind == "linear" && !scaled)) {
      return ConfigError(source, absl::StrCat("rope_parameters ", it->dump(), " is not supported; ", allowed));
    }
    RETURN_IF_ERROR(set(theta_key, *theta));
    if (!scaled) return absl::OkStatus();
    if (kind == "default") return set("rope_scaling", nullptr);
    return set("rope_scaling", p);
  };
  if (it->contains("full_attention") || it->contains("sliding_attention")) {
    for (const auto& [key, value] : it->items()) {
      if (key != "full_attention" && key != "sliding_attention") {
        return ConfigError(source, absl::StrCat("rope_parameters has an unknown layer kind \"", key, "\"; ", allowed));
      }
    }
    if (auto f = it->find("full_attention"); f != it->end()) RETURN_IF_ERROR(read(*f, "rope_theta", true));
    if (auto l = it->find("sliding_attention"); l != it->end()) RETURN_IF_ERROR(read(*l, "rope_local_base_freq", false));
    return out;
  }
  RETURN_IF_ERROR(read(*it, "rope_theta", true));
  return out;
}

absl::Status ReadSlidingWindow(const json& j, absl::string_view source, ModelConfig* c) {
  RETURN_IF_ERROR(ReadInt(j, source, "sliding_window", 1, 1 << 24, &c->sliding_window));
  // Gemma 2's Hub configs repeat it as sliding_window_size.
  if (auto it = j.find("sliding_window_size"); it != j.end() && !it->is_null() && *it != c->sliding_window) {
    return ConfigError(source, absl::StrCat("sliding_window_size ", it->dump(), " contradicts sliding_window ",
                                            c->sliding_window));
  }
  return absl::OkStatus();
}

// transformers' Gemma3TextConfig defaults (4.50), which a multimodal config's text_config leaves out.
json Gemma3TextDefaults() {
  return json{{"vocab_size", 262208},          {"hidden_size", 2304},
              {"intermediate_size", 9216},     {"num_hidden_layers", 26},
              {"num_attention_heads", 8},      {"num_key_value_heads", 4},
              {"head_dim", 256},               {"hidden_activation", "gelu_pytorch_tanh"},
              {"max_position_embeddings", 131072}, {"rms_norm_eps", 1e-6},
              {"pad_token_id", 0},             {"eos_token_id", 1},
              {"bos_token_id", 2},             {"rope_theta", 1000000.0},
              {"query_pre_attn_scalar", 256},  {"sliding_window", 4096},
              {"final_logit_softcapping", nullptr}, {"attn_logit_softcapping", nullptr},
              {"rope_scaling", nullptr},       {"rope_local_base_freq", 10000.0},
              {"sliding_window_pattern", 6}};
}

struct PublishedLayout {
  ModelFamily family;
  bool nested;  // text settings under text_config, tensors under language_model.
};

// model_type and architectures name the layout; they must agree.
absl::StatusOr<PublishedLayout> LayoutOf(const json& j, absl::string_view source) {
  struct Known {
    const char* model_type;
    const char* architecture;
    PublishedLayout layout;
  };
  static const Known kKnown[] = {
      {"gemma", "GemmaForCausalLM", {ModelFamily::kGemma1, false}},
      {"gemma2", "Gemma2ForCausalLM", {ModelFamily::kGemma2, false}},
      {"gemma3_text", "Gemma3ForCausalLM", {ModelFamily::kGemma3, false}},
      {"gemma3", "Gemma3ForConditionalGeneration", {ModelFamily::kGemma3, true}},
  };
  constexpr char kAllowed[] = "allowed: \"gemma\", \"gemma2\", \"gemma3_text\", \"gemma3\"";
  auto type = j.find("model_type");
  if (type == j.end() || !type->is_string()) {
    return ConfigError(source, absl::StrCat("missing \"model_type\"; ", kAllowed));
  }
  const Known* known = nullptr;
  for (const Known& k : kKnown) {
    if (*type == k.model_type) known = &k;
  }
  if (known == nullptr) {
    return ConfigError(source, absl::StrCat("model_type ", type->dump(), " is not supported; ", kAllowed));
  }
  if (auto arch = j.find("architectures"); arch != j.end() && !arch->is_null()) {
    if (!arch->is_array() || arch->size() != 1 || (*arch)[0] != known->architecture) {
      return ConfigError(source, absl::StrCat("architectures ", arch->dump(), " does not match model_type ",
                                              type->dump(), "; expected [\"", known->architecture, "\"]"));
    }
  }
  return known->layout;
}

// The text model's settings (a flat config, or text_config with its defaults applied).
absl::StatusOr<ModelConfig> ParseTextConfig(const json& j, absl::string_view source, const PublishedLayout& layout) {
  RETURN_IF_ERROR(CheckActivation(j, source));
  ModelConfig c;
  c.family = layout.family;
  constexpr int64_t kMaxDim = 1 << 20;
  constexpr int64_t kMaxVocab = 1 << 22;
  RETURN_IF_ERROR(ReadInt(j, source, "vocab_size", 1, kMaxVocab, &c.vocab_size));
  RETURN_IF_ERROR(ReadInt(j, source, "hidden_size", 1, kMaxDim, &c.hidden_size));
  RETURN_IF_ERROR(ReadInt(j, source, "intermediate_size", 1, kMaxDim, &c.intermediate_size));
  RETURN_IF_ERROR(ReadInt(j, source, "num_hidden_layers", 1, 1024, &c.num_layers));
  RETURN_IF_ERROR(ReadInt(j, source, "num_attention_heads", 1, 1024, &c.num_heads));
  c.num_kv_heads = c.num_heads;
  RETURN_IF_ERROR(ReadInt(j, source, "num_key_value_heads", 1, 1024, &c.num_kv_heads, false));
  c.head_dim = c.num_heads > 0 ? c.hidden_size / c.num_heads : 0;
  // Gemma 2 and 3 never have head_dim = hidden / heads: it must be stated.
  RETURN_IF_ERROR(ReadInt(j, source, "head_dim", 1, 4096, &c.head_dim, c.family != ModelFamily::kGemma1));
  RETURN_IF_ERROR(ReadInt(j, source, "max_position_embeddings", 1, 1 << 24, &c.max_position_embeddings));
  RETURN_IF_ERROR(ReadInt(j, source, "bos_token_id", 0, kMaxVocab, &c.bos_id, false));
  RETURN_IF_ERROR(ReadEosIds(j, source, &c));
  RETURN_IF_ERROR(ReadInt(j, source, "pad_token_id", 0, kMaxVocab, &c.pad_id, false));
  RETURN_IF_ERROR(ReadFloat(j, source, "rms_norm_eps", &c.rms_norm_eps));
  RETURN_IF_ERROR(ReadFloat(j, source, "rope_theta", &c.rope_theta));
  if (auto it = j.find("tie_word_embeddings"); it != j.end() && it->is_boolean() && !it->get<bool>()) {
    return ConfigError(source, "tie_word_embeddings=false is not supported; Gemma ties the output projection");
  }
  RETURN_IF_ERROR(ReadRopeScaling(j, source, &c));
  if (c.family != ModelFamily::kGemma1) {
    RETURN_IF_ERROR(ReadPositive(j, source, "query_pre_attn_scalar", true, false, &c.query_pre_attn_scalar));
    // Gemma 2 without its caps would compute another function silently; Gemma 3 has none by design.
    const bool caps_required = c.family == ModelFamily::kGemma2;
    RETURN_IF_ERROR(ReadPositive(j, source, "attn_logit_softcapping", caps_required, true, &c.attn_logit_softcap));
    RETURN_IF_ERROR(ReadPositive(j, source, "final_logit_softcapping", caps_required, true, &c.final_logit_softcap));
    RETURN_IF_ERROR(ReadSlidingWindow(j, source, &c));
  }
  if (c.family == ModelFamily::kGemma3) {
    RETURN_IF_ERROR(ReadPositive(j, source, "rope_local_base_freq", true, false, &c.rope_local_theta));
    if (!(c.rope_local_theta > 1.0f)) return ConfigError(source, "rope_local_base_freq must be greater than 1");
  }
  if (c.num_layers > 0 && c.family != ModelFamily::kGemma1) RETURN_IF_ERROR(ReadLayerPattern(j, source, &c));
  if (layout.nested) {
    c.tensor_prefix = "language_model.model.";
    c.ignored_tensor_prefixes = {"vision_tower.", "multi_modal_projector."};
  }
  RETURN_IF_ERROR(Validate(c, source));
  return c;
}

}  // namespace

const char* ModelFamilyName(ModelFamily family) {
  switch (family) {
    case ModelFamily::kGemma1:
      return "Gemma 1";
    case ModelFamily::kGemma2:
      return "Gemma 2";
    case ModelFamily::kGemma3:
      return "Gemma 3";
  }
  return "?";
}

int64_t ModelConfig::ParameterCount() const {
  const int64_t h = hidden_size;
  const int64_t norms = (sandwich_norms() ? 4 * h : 2 * h) + (qk_norm() ? 2 * head_dim : 0);
  const int64_t per_layer = h * q_dim() * 2 + h * kv_dim() * 2 + 3 * h * intermediate_size + norms;
  return static_cast<int64_t>(vocab_size) * h + num_layers * per_layer + h;
}

std::string ModelConfig::ShapeName() const {
  auto same = [&](const ModelConfig& o) {
    return family == o.family && vocab_size == o.vocab_size && hidden_size == o.hidden_size &&
           intermediate_size == o.intermediate_size && num_layers == o.num_layers && num_heads == o.num_heads && num_kv_heads == o.num_kv_heads &&
           head_dim == o.head_dim;
  };
  if (same(Gemma2BShape())) return "gemma-2b";
  if (same(Gemma7BShape())) return "gemma-7b";
  for (const auto& [name, shape] : PublishedGemma23Shapes()) {
    if (same(shape)) return name;
  }
  return "custom";
}

std::string ModelConfig::DebugString() const {
  return absl::StrCat(ShapeName(), " (", ModelFamilyName(family), "): layers=", num_layers, " hidden=", hidden_size,
                      " ffn=", intermediate_size, " heads=", num_heads, "/", num_kv_heads, " head_dim=", head_dim, " vocab=", vocab_size);
}

const char* QuantizationMethodName(CheckpointQuantization::Method method) {
  switch (method) {
    case CheckpointQuantization::Method::kNone:
      return "none";
    case CheckpointQuantization::Method::kGptq:
      return "gptq";
    case CheckpointQuantization::Method::kAwq:
      return "awq";
    case CheckpointQuantization::Method::kFp8:
      return "compressed-tensors fp8";
  }
  return "?";
}

namespace {

// compressed-tensors' FP8 weights: every config group's weights 8-bit floats, symmetric, static, one scale per
// channel or per tensor. `error` makes the message for a field.
absl::StatusOr<CheckpointQuantization> ParseCompressedTensorsFp8(
    const json& c, const std::function<absl::Status(const std::string&)>& error) {
  CheckpointQuantization q;
  q.method = CheckpointQuantization::Method::kFp8;
  auto string_field = [&](const json& obj, const char* key, absl::string_view where) -> absl::StatusOr<std::string> {
    auto f = obj.find(key);
    if (f == obj.end() || f->is_null()) return std::string();
    if (!f->is_string()) return error(absl::StrCat(where, key, " must be a string, not ", f->dump()));
    return f->get<std::string>();
  };
  ASSIGN_OR_RETURN(const std::string format, string_field(c, "format", ""));
  if (format != "float-quantized" && format != "naive-quantized") {
    return error(absl::StrCat("format \"", format, "\" is not supported; allowed: float-quantized (FP8 weights)"));
  }
  ASSIGN_OR_RETURN(const std::string status, string_field(c, "quantization_status", ""));
  if (!status.empty() && status != "compressed") {
    return error(absl::StrCat("quantization_status \"", status, "\" is not supported; allowed: compressed"));
  }
  auto groups = c.find("config_groups");
  if (groups == c.end() || !groups->is_object() || groups->empty()) {
    return error("config_groups must be an object of one or more groups");
  }
  for (auto g = groups->begin(); g != groups->end(); ++g) {
    const std::string where = absl::StrCat("config_groups.", g.key(), ".weights.");
    if (!g->is_object()) return error(absl::StrCat("config_groups.", g.key(), " must be an object"));
    auto w = g->find("weights");
    if (w == g->end() || !w->is_object()) return error(where.substr(0, where.size() - 1) + " must be an object");
    auto bits = w->find("num_bits");
    if (bits == w->end() || !bits->is_number_integer() || bits->get<int64_t>() != 8) {
      return error(absl::StrCat(where, "num_bits must be 8, not ", bits == w->end() ? "missing" : bits->dump()));
    }
    ASSIGN_OR_RETURN(const std::string type, string_field(*w, "type", where));
    if (type != "float") return error(absl::StrCat(where, "type \"", type, "\" is not supported; allowed: float"));
    ASSIGN_OR_RETURN(const std::string strategy, string_field(*w, "strategy", where));
    if (strategy != "channel" && strategy != "tensor") {
      return error(absl::StrCat(where, "strategy \"", strategy, "\" is not supported; allowed: channel, tensor"));
    }
    for (const auto& [key, want] : {std::pair<const char*, bool>{"symmetric", true}, {"dynamic", false}}) {
      auto f = w->find(key);
      if (f == w->end() || f->is_null()) continue;
      if (!f->is_boolean() || f->get<bool>() != want) {
        return error(absl::StrCat(where, key, " must be ", want ? "true" : "false", ", not ", f->dump()));
      }
    }
  }
  return q;
}

// quantization_config, as AutoGPTQ / GPTQModel and AutoAWQ write it. Every field is type-checked before it is
// read: a wrong type is an error naming the field, never an exception.
absl::StatusOr<CheckpointQuantization> ParseQuantization(const json& j, absl::string_view source) {
  CheckpointQuantization q;
  auto it = j.find("quantization_config");
  if (it == j.end() || it->is_null()) return q;
  const json& c = *it;
  auto error = [&](const std::string& what) { return ConfigError(source, "quantization_config: " + what); };
  if (!c.is_object()) return error("must be an object");
  // The first of `keys` present and not null; nullptr if none.
  auto find = [&](std::initializer_list<const char*> keys) -> const json* {
    for (const char* key : keys) {
      if (auto f = c.find(key); f != c.end() && !f->is_null()) return &*f;
    }
    return nullptr;
  };
  auto text = [&](const char* key, const std::string& fallback) -> absl::StatusOr<std::string> {
    const json* f = find({key});
    if (f == nullptr) return fallback;
    if (!f->is_string()) return error(absl::StrCat(key, " must be a string, not ", f->dump()));
    return f->get<std::string>();
  };
  auto flag = [&](const char* key, bool fallback) -> absl::StatusOr<bool> {
    const json* f = find({key});
    if (f == nullptr) return fallback;
    if (!f->is_boolean()) return error(absl::StrCat(key, " must be true or false, not ", f->dump()));
    return f->get<bool>();
  };
  ASSIGN_OR_RETURN(const std::string method, text("quant_method", ""));
  if (method == "gptq") {
    q.method = CheckpointQuantization::Method::kGptq;
    ASSIGN_OR_RETURN(const std::string format, text("checkpoint_format", "gptq"));
    if (format != "gptq" && format != "gptq_v2") {
      return error("checkpoint_format \"" + format + "\" is not supported; allowed: gptq, gptq_v2");
    }
    q.zeros_minus_one = format == "gptq";
    ASSIGN_OR_RETURN(const bool act_order, flag("desc_act", false));
    if (act_order) {
      return error("desc_act true (act-order, inputs regrouped by g_idx) is not supported; quantize with "
                   "desc_act false");
    }
  } else if (method == "awq") {
    q.method = CheckpointQuantization::Method::kAwq;
    ASSIGN_OR_RETURN(std::string version, text("version", "gemm"));
    for (char& ch : version) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (version != "gemm") return error("version \"" + version + "\" is not supported; allowed: gemm");
    ASSIGN_OR_RETURN(const bool zero_point, flag("zero_point", true));
    if (!zero_point) return error("zero_point false is not supported; allowed: true");
  } else if (method == "compressed-tensors") {
    q.method = CheckpointQuantization::Method::kFp8;
    return ParseCompressedTensorsFp8(c, error);
  } else {
    return error("quant_method \"" + method + "\" is not supported; allowed: gptq, awq, compressed-tensors");
  }
  const json* bits = find({"bits", "w_bit"});
  if (bits == nullptr || !bits->is_number_integer() || bits->get<int64_t>() != 4) {
    return error("bits must be 4 (W4A16), not " + (bits == nullptr ? std::string("missing") : bits->dump()));
  }
  const json* group = find({"group_size", "q_group_size"});
  const int64_t g = group != nullptr && group->is_number_integer() ? group->get<int64_t>() : 0;
  if (g != 32 && g != 64 && g != 128) {
    return error("group_size must be 32, 64 or 128, not " + (group == nullptr ? std::string("missing") : group->dump()));
  }
  q.group_size = static_cast<int>(g);
  return q;
}

absl::StatusOr<ModelConfig> ParseLayout(const json& j, absl::string_view source) {
  ASSIGN_OR_RETURN(const PublishedLayout layout, LayoutOf(j, source));
  if (!layout.nested) {
    ASSIGN_OR_RETURN(const json text, WithLegacyRopeKeys(j, source));
    return ParseTextConfig(text, source, layout);
  }
  // Gemma 3's multimodal layout: the text model's settings sit under text_config, written by save_pretrained as
  // a diff against Gemma3TextConfig's defaults, so the defaults are part of the format.
  auto text = j.find("text_config");
  if (text == j.end() || !text->is_object()) {
    return ConfigError(source, "model_type \"gemma3\" needs an object \"text_config\" (the text model's settings)");
  }
  if (auto t = text->find("model_type"); t != text->end() && *t != "gemma3_text") {
    return ConfigError(source, absl::StrCat("text_config.model_type ", t->dump(), " contradicts model_type \"gemma3\"; ",
                                            "expected \"gemma3_text\""));
  }
  json merged = Gemma3TextDefaults();
  // An explicit layer_types stands alone: only a pattern the file states can contradict it.
  if (text->contains("layer_types") && !text->contains("sliding_window_pattern")) merged.erase("sliding_window_pattern");
  ASSIGN_OR_RETURN(const json stated, WithLegacyRopeKeys(*text, absl::StrCat(source, " text_config")));
  for (auto it = stated.begin(); it != stated.end(); ++it) merged[it.key()] = it.value();
  // Token ids are top-level in the published file.
  for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
    if (auto it = j.find(key); it != j.end() && !it->is_null()) merged[key] = *it;
  }
  return ParseTextConfig(merged, absl::StrCat(source, " text_config"), layout);
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view source) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return ConfigError(source, "not valid JSON");
  if (!j.is_object()) return ConfigError(source, "must be a JSON object");
  ASSIGN_OR_RETURN(ModelConfig config, ParseLayout(j, source));
  ASSIGN_OR_RETURN(config.quantization, ParseQuantization(j, source));
  return config;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open (a Hugging Face Gemma checkpoint needs config.json)"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseModelConfig(ss.str(), path);
}

ModelConfig Gemma2BShape() {
  ModelConfig c;
  c.vocab_size = 256000;
  c.hidden_size = 2048;
  c.intermediate_size = 16384;
  c.num_layers = 18;
  c.num_heads = 8;
  c.num_kv_heads = 1;
  c.head_dim = 256;
  c.max_position_embeddings = 8192;
  return c;
}

ModelConfig Gemma7BShape() {
  ModelConfig c = Gemma2BShape();
  c.hidden_size = 3072;
  c.intermediate_size = 24576;
  c.num_layers = 28;
  c.num_heads = 16;
  c.num_kv_heads = 16;
  return c;
}

ModelConfig TinyShape() {
  ModelConfig c;
  c.vocab_size = 4096;
  c.hidden_size = 128;
  c.intermediate_size = 384;
  c.num_layers = 3;
  c.num_heads = 4;
  c.num_kv_heads = 1;
  c.head_dim = 32;
  c.max_position_embeddings = 512;
  return c;
}

}  // namespace gemma
