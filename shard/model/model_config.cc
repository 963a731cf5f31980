#include "shard/model/model_config.h"

#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

namespace gemma {
namespace {

using nlohmann::json;

absl::Status ConfigError(absl::string_view source, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
}

// Reads a required positive integer field, with an upper bound that keeps
// later size arithmetic far from overflow.
absl::Status ReadInt(const json& j, absl::string_view source, const char* key, int64_t max, int* out,
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
  if (v < 0 || v > max) {
    return ConfigError(source, absl::StrCat("field \"", key, "\" is ", v, "; allowed 0..", max));
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
  for (auto [v, name] : {std::pair{c.bos_id, "bos_token_id"}, {c.eos_id, "eos_token_id"}, {c.pad_id, "pad_token_id"}}) {
    if (v >= c.vocab_size) {
      return ConfigError(source, absl::StrCat("\"", name, "\" (", v, ") is outside the vocabulary (", c.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

int64_t ModelConfig::ParameterCount() const {
  const int64_t h = hidden_size;
  const int64_t per_layer = h * q_dim() * 2 + h * kv_dim() * 2 + 3 * h * intermediate_size + 2 * h;
  return static_cast<int64_t>(vocab_size) * h + num_layers * per_layer + h;
}

std::string ModelConfig::ShapeName() const {
  auto same = [&](const ModelConfig& o) {
    return vocab_size == o.vocab_size && hidden_size == o.hidden_size && intermediate_size == o.intermediate_size &&
           num_layers == o.num_layers && num_heads == o.num_heads && num_kv_heads == o.num_kv_heads &&
           head_dim == o.head_dim;
  };
  if (same(Gemma2BShape())) return "gemma-2b";
  if (same(Gemma7BShape())) return "gemma-7b";
  return "custom";
}

std::string ModelConfig::DebugString() const {
  return absl::StrCat(ShapeName(), ": layers=", num_layers, " hidden=", hidden_size, " ffn=", intermediate_size,
                      " heads=", num_heads, "/", num_kv_heads, " head_dim=", head_dim, " vocab=", vocab_size);
}

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view source) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return ConfigError(source, "not valid JSON");
  if (!j.is_object()) return ConfigError(source, "must be a JSON object");
  auto type = j.find("model_type");
  if (type == j.end() || !type->is_string()) return ConfigError(source, "missing \"model_type\"; expected \"gemma\"");
  if (type->get<std::string>() != "gemma") {
    return ConfigError(source, absl::StrCat("model_type \"", type->get<std::string>(),
                                            "\" is not supported; allowed: \"gemma\" (Gemma 1)"));
  }
  RETURN_IF_ERROR(CheckActivation(j, source));

  ModelConfig c;
  constexpr int64_t kMaxDim = 1 << 20;
  constexpr int64_t kMaxVocab = 1 << 22;
  absl::Status s;
  if (!(s = ReadInt(j, source, "vocab_size", kMaxVocab, &c.vocab_size)).ok()) return s;
  if (!(s = ReadInt(j, source, "hidden_size", kMaxDim, &c.hidden_size)).ok()) return s;
  if (!(s = ReadInt(j, source, "intermediate_size", kMaxDim, &c.intermediate_size)).ok()) return s;
  if (!(s = ReadInt(j, source, "num_hidden_layers", 1024, &c.num_layers)).ok()) return s;
  if (!(s = ReadInt(j, source, "num_attention_heads", 1024, &c.num_heads)).ok()) return s;
  c.num_kv_heads = c.num_heads;
  if (!(s = ReadInt(j, source, "num_key_value_heads", 1024, &c.num_kv_heads, false)).ok()) return s;
  c.head_dim = c.num_heads > 0 ? c.hidden_size / c.num_heads : 0;
  if (!(s = ReadInt(j, source, "head_dim", 4096, &c.head_dim, false)).ok()) return s;
  if (!(s = ReadInt(j, source, "max_position_embeddings", 1 << 24, &c.max_position_embeddings)).ok()) return s;
  if (!(s = ReadInt(j, source, "bos_token_id", kMaxVocab, &c.bos_id, false)).ok()) return s;
  if (!(s = ReadInt(j, source, "eos_token_id", kMaxVocab, &c.eos_id, false)).ok()) return s;
  if (!(s = ReadInt(j, source, "pad_token_id", kMaxVocab, &c.pad_id, false)).ok()) return s;
  if (!(s = ReadFloat(j, source, "rms_norm_eps", &c.rms_norm_eps)).ok()) return s;
  if (!(s = ReadFloat(j, source, "rope_theta", &c.rope_theta)).ok()) return s;
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    return ConfigError(source, "rope_scaling is not supported for Gemma 1; allowed: null");
  }
  if (auto it = j.find("tie_word_embeddings"); it != j.end() && it->is_boolean() && !it->get<bool>()) {
    return ConfigError(source, "tie_word_embeddings=false is not supported; Gemma ties the output projection");
  }
  RETURN_IF_ERROR(Validate(c, source));
  return c;
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
