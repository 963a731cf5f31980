#include "shard/checkpoint/checkpoint_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <algorithm>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "shard/model/dtype.h"
#include "shard/checkpoint/progress.h"

namespace gemma {
namespace {

uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Counter-based, so any element can be drawn independently (parallel, reproducible).
float NormalAt(uint64_t stream, uint64_t i) {
  const uint64_t a = Mix(stream + 0x9e3779b97f4a7c15ull * (2 * i + 1));
  const uint64_t b = Mix(stream + 0x9e3779b97f4a7c15ull * (2 * i + 2));
  const double u1 = (static_cast<double>(a >> 11) + 1.0) * 0x1.0p-53;
  const double u2 = static_cast<double>(b >> 11) * 0x1.0p-53;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
}

uint16_t F32ToF16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const int32_t exp = static_cast<int32_t>((x >> 23) & 0xff) - 127 + 15;
  uint32_t mant = x & 0x7fffffu;
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (exp <= 0) {
    if (exp < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    const int shift = 14 - exp;
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

void EncodeOne(float v, DType dtype, char* dst) {
  if (dtype == DType::kF32) {
    std::memcpy(dst, &v, 4);
  } else {
    const uint16_t h = dtype == DType::kBF16 ? F32ToBf16(v) : F32ToF16(v);
    std::memcpy(dst, &h, 2);
  }
}

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}

float StdFor(const std::string& name, const std::vector<int64_t>& shape) {
  if (name.ends_with("embed_tokens.weight")) return 0.02f;
  if (shape.size() == 1) return 0.1f;
  return 0.1f * std::sqrt(128.0f / static_cast<float>(shape[1]));
}

// Writes leave the page cache in small folios; once dropped, the first load
// reads the file back through huge-page readahead (see MappedFile), which
// streams markedly faster on every step. Also keeps gigabytes of just-written
// data from crowding out other cached files.
void DropFromPageCache(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

}  // namespace

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot write"));
  std::vector<TensorHeader> headers;
  for (const auto& t : tensors) headers.push_back({t.name, t.dtype, t.shape, t.bytes.size()});
  const std::string header = SafetensorsHeaderBytes(headers, metadata);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  for (const auto& t : tensors) out.write(t.bytes.data(), static_cast<std::streamsize>(t.bytes.size()));
  if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed (disk full?)"));
  return absl::OkStatus();
}

namespace {

nlohmann::ordered_json EosJson(const ModelConfig& c) {
  if (c.extra_eos_ids.empty()) return c.eos_id;
  nlohmann::ordered_json ids = nlohmann::ordered_json::array({c.eos_id});
  for (int id : c.extra_eos_ids) ids.push_back(id);
  return ids;
}

nlohmann::ordered_json NullIfZero(float v) { return v > 0 ? nlohmann::ordered_json(v) : nlohmann::ordered_json(); }

// The text model's keys of a Gemma 2 or Gemma 3 config.json, as the Hub's files spell them.
nlohmann::ordered_json Gemma23TextJson(const ModelConfig& c) {
  const bool g2 = c.family == ModelFamily::kGemma2;
  nlohmann::ordered_json types = nlohmann::ordered_json::array();
  for (int i = 0; i < c.num_layers; ++i) types.push_back(c.IsLocal(i) ? "sliding_attention" : "full_attention");
  nlohmann::ordered_json j = {
      {"architectures", {g2 ? "Gemma2ForCausalLM" : "Gemma3ForCausalLM"}},
      {"attention_bias", false},
      {"attn_logit_softcapping", NullIfZero(c.attn_logit_softcap)},
      {"bos_token_id", c.bos_id},
      {"eos_token_id", EosJson(c)},
      {"final_logit_softcapping", NullIfZero(c.final_logit_softcap)},
      {"head_dim", c.head_dim},
      {"hidden_activation", "gelu_pytorch_tanh"},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"layer_types", types},
      {"max_position_embeddings", c.max_position_embeddings},
      {"model_type", g2 ? "gemma2" : "gemma3_text"},
      {"num_attention_heads", c.num_heads},
      {"num_hidden_layers", c.num_layers},
      {"num_key_value_heads", c.num_kv_heads},
      {"pad_token_id", c.pad_id},
      {"query_pre_attn_scalar", c.query_pre_attn_scalar},
      {"rms_norm_eps", c.rms_norm_eps},
  };
  if (!g2) {
    j["rope_local_base_freq"] = c.rope_local_theta;
    j["rope_scaling"] = c.rope_global_scale != 1.0f
                            ? nlohmann::ordered_json{{"factor", c.rope_global_scale}, {"rope_type", "linear"}}
                            : nlohmann::ordered_json();
  }
  j["rope_theta"] = c.rope_theta;
  j["sliding_window"] = c.sliding_window;
  j["torch_dtype"] = "bfloat16";
  j["vocab_size"] = c.vocab_size;
  return j;
}

}  // namespace

std::string ModelConfigJson(const ModelConfig& c) {
  if (c.family != ModelFamily::kGemma1) {
    nlohmann::ordered_json text = Gemma23TextJson(c);
    if (c.tensor_prefix == "model.") return text.dump(2) + "\n";
    // The multimodal layout; a text-only server needs no vision_config.
    text.erase("architectures");
    nlohmann::ordered_json j = {{"architectures", {"Gemma3ForConditionalGeneration"}},
                                {"eos_token_id", EosJson(c)},
                                {"model_type", "gemma3"},
                                {"text_config", text},
                                {"torch_dtype", "bfloat16"}};
    return j.dump(2) + "\n";
  }
  nlohmann::ordered_json j = {
      {"architectures", {"GemmaForCausalLM"}},
      {"attention_bias", false},
      {"bos_token_id", c.bos_id},
      {"eos_token_id", c.eos_id},
      {"head_dim", c.head_dim},
      {"hidden_act", "gelu"},
      {"hidden_activation", "gelu_pytorch_tanh"},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"max_position_embeddings", c.max_position_embeddings},
      {"model_type", "gemma"},
      {"num_attention_heads", c.num_heads},
      {"num_hidden_layers", c.num_layers},
      {"num_key_value_heads", c.num_kv_heads},
      {"pad_token_id", c.pad_id},
      {"rms_norm_eps", c.rms_norm_eps},
      {"rope_scaling", nullptr},
      {"rope_theta", c.rope_theta},
      {"torch_dtype", "bfloat16"},
      {"vocab_size", c.vocab_size},
  };
  return j.dump(2) + "\n";
}

std::vector<std::pair<std::string, std::vector<int64_t>>> GemmaTensorShapes(const ModelConfig& c) {
  const int64_t h = c.hidden_size;
  const std::string& m = c.tensor_prefix;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out = {{m + "embed_tokens.weight", {c.vocab_size, h}}};
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat(m, "layers.", i, ".");
    out.push_back({p + "self_attn.q_proj.weight", {c.q_dim(), h}});
    out.push_back({p + "self_attn.k_proj.weight", {c.kv_dim(), h}});
    out.push_back({p + "self_attn.v_proj.weight", {c.kv_dim(), h}});
    out.push_back({p + "self_attn.o_proj.weight", {h, c.q_dim()}});
    if (c.qk_norm()) {
      out.push_back({p + "self_attn.q_norm.weight", {c.head_dim}});
      out.push_back({p + "self_attn.k_norm.weight", {c.head_dim}});
    }
    out.push_back({p + "mlp.gate_proj.weight", {c.intermediate_size, h}});
    out.push_back({p + "mlp.up_proj.weight", {c.intermediate_size, h}});
    out.push_back({p + "mlp.down_proj.weight", {h, c.intermediate_size}});
    out.push_back({p + "input_layernorm.weight", {h}});
    out.push_back({p + "post_attention_layernorm.weight", {h}});
    if (c.sandwich_norms()) {
      out.push_back({p + "pre_feedforward_layernorm.weight", {h}});
      out.push_back({p + "post_feedforward_layernorm.weight", {h}});
    }
  }
  out.push_back({m + "norm.weight", {h}});
  return out;
}

absl::Status WriteRandomCheckpoint(const std::string& dir, const ModelConfig& config,
                                   const RandomCheckpointOptions& options, const std::string& tokenizer_bytes) {
  if (options.dtype != DType::kBF16 && options.dtype != DType::kF16 && options.dtype != DType::kF32) {
    return absl::InvalidArgumentError("checkpoint dtype must be BF16, F16 or F32");
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(dir, ": cannot create directory: ", ec.message()));
  {
    std::ofstream cfg(dir + "/config.json", std::ios::trunc);
    cfg << ModelConfigJson(config);
    std::ofstream tok(dir + "/tokenizer.model", std::ios::binary | std::ios::trunc);
    tok.write(tokenizer_bytes.data(), static_cast<std::streamsize>(tokenizer_bytes.size()));
    if (!cfg || !tok) return absl::DataLossError(absl::StrCat(dir, ": cannot write config.json or tokenizer.model"));
  }

  auto shapes = GemmaTensorShapes(config);
  std::sort(shapes.begin(), shapes.end());  // data in name order, as the reference files
  const int elem = DTypeSize(options.dtype);
  std::vector<TensorHeader> headers;
  int64_t total = 0;
  for (const auto& [name, shape] : shapes) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    headers.push_back({name, options.dtype, shape, static_cast<uint64_t>(n * elem)});
    total += n * elem;
  }
  const std::string path = dir + "/model.safetensors";
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot write"));
  const std::string header = SafetensorsHeaderBytes(headers, {{"format", "pt"}});
  out.write(header.data(), static_cast<std::streamsize>(header.size()));

  Progress progress("writing " + path, total);
  int64_t written = 0;
  constexpr int64_t kChunk = 1 << 22;
  std::vector<char> bytes(kChunk * elem);
  for (size_t ti = 0; ti < shapes.size(); ++ti) {
    const auto& [name, shape] = shapes[ti];
    const int64_t n = static_cast<int64_t>(headers[ti].num_bytes) / elem;
    const float std_dev = StdFor(name, shape);
    const uint64_t stream = Mix(options.seed * 0x100000001b3ull + Fnv1a(name));
    for (int64_t begin = 0; begin < n; begin += kChunk) {
      const int64_t len = std::min(kChunk, n - begin);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < len; ++i) EncodeOne(NormalAt(stream, begin + i) * std_dev, options.dtype, &bytes[i * elem]);
      out.write(bytes.data(), static_cast<std::streamsize>(len * elem));
      written += len * elem;
      progress.Update(written);
    }
  }
  progress.Finish();
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed (disk full?)"));
  if (options.drop_from_page_cache) DropFromPageCache(path);
  return absl::OkStatus();
}

}  // namespace gemma
