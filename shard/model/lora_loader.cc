#include "shard/model/lora_loader.h"

#include <cmath>
#include <limits>
#include <cstring>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"
#include "shard/checkpoint/mapped_file.h"
#include "shard/checkpoint/read_file.h"
#include "shard/checkpoint/safetensors.h"
#include "shard/model/dtype.h"

namespace gemma {
namespace {

using nlohmann::json;

struct LoraConfig {
  int rank = 0;
  float scaling = 1.0f;
  std::set<LoraTarget> targets;
  // PEFT's layers_to_transform: the only layers the adapter may hold; empty: every layer.
  std::set<int> layers;
};

absl::Status Bad(const std::string& file, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", what));
}

std::optional<LoraTarget> TargetNamed(const std::string& name) {
  for (int t = 0; t < kNumLoraTargets; ++t) {
    if (name == LoraTargetName(static_cast<LoraTarget>(t)))
      return static_cast<LoraTarget>(t);
  }
  return std::nullopt;
}

// A field peft writes that must keep its default for plain LoRA: anything else
// changes what the adapter computes.
absl::Status RequireDefault(const json& j, const std::string& file,
                            const char* key, const json& allowed,
                            const char* why) {
  if (!j.contains(key) || j[key].is_null() || j[key] == allowed)
    return absl::OkStatus();
  if ((j[key].is_object() || j[key].is_array()) && j[key].empty())
    return absl::OkStatus();
  return Bad(file, absl::StrCat("\"", key, "\" is ", j[key].dump(), "; only ",
                                allowed.dump(), " is served (", why, ")"));
}

absl::StatusOr<LoraConfig> ParseConfig(const std::string& file) {
  ASSIGN_OR_RETURN(const std::string text,
                   ReadWholeFile(file, "adapter config"));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  // JSON has no Infinity or NaN: a config holding one is not valid JSON either.
  if (j.is_discarded()) return Bad(file, "is not valid JSON");
  if (!j.is_object()) return Bad(file, "is not a JSON object");
  if (!j.contains("peft_type") || !j["peft_type"].is_string() || j["peft_type"].get<std::string>() != "LORA") {
    return Bad(file,
               absl::StrCat(
                   "\"peft_type\" is ",
                   j.contains("peft_type") ? j["peft_type"].dump() : "missing",
                   "; only \"LORA\" adapters are served"));
  }
  LoraConfig c;
  if (!j.contains("r") || !j["r"].is_number_integer())
    return Bad(file, "\"r\" (the rank) must be an integer");
  const int64_t r = j["r"].get<int64_t>();
  if (r < 1 || r > kMaxLoraRank) {
    return Bad(file, absl::StrCat("\"r\" is ", r, "; ranks 1 to ", kMaxLoraRank,
                                  " are served"));
  }
  c.rank = static_cast<int>(r);
  double alpha = 8.0;  // peft's LoraConfig default, whatever the rank
  if (j.contains("lora_alpha")) {
    if (!j["lora_alpha"].is_number())
      return Bad(file, "\"lora_alpha\" must be a number");
    alpha = j["lora_alpha"].get<double>();
  }
  if (!std::isfinite(alpha)) return Bad(file, "\"lora_alpha\" must be finite");
  if (j.contains("use_rslora") && !j["use_rslora"].is_null() && !j["use_rslora"].is_boolean()) {
    return Bad(file, "\"use_rslora\" must be true or false");
  }
  const bool rslora = j.contains("use_rslora") && j["use_rslora"].is_boolean() && j["use_rslora"].get<bool>();
  const double scaling = rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
  // Applied in f32: an alpha past its range would scale every adapted row to infinities.
  if (!(std::abs(scaling) <= std::numeric_limits<float>::max())) {
    return Bad(file, absl::StrCat("\"lora_alpha\" ", alpha, " makes the scaling ", scaling,
                                  ", past what f32 holds (", std::numeric_limits<float>::max(), ")"));
  }
  c.scaling = static_cast<float>(scaling);
  RETURN_IF_ERROR(RequireDefault(j, file, "use_dora", false,
                                 "DoRA rescales the merged weight"));
  RETURN_IF_ERROR(RequireDefault(j, file, "fan_in_fan_out", false,
                                 "Hugging Face Gemma uses nn.Linear"));
  RETURN_IF_ERROR(RequireDefault(j, file, "bias", "none", "adapter biases"));
  RETURN_IF_ERROR(RequireDefault(j, file, "rank_pattern", json::object(),
                                 "per-module ranks"));
  RETURN_IF_ERROR(RequireDefault(j, file, "alpha_pattern", json::object(),
                                 "per-module alphas"));
  RETURN_IF_ERROR(RequireDefault(j, file, "modules_to_save", nullptr,
                                 "fully trained extra modules"));
  RETURN_IF_ERROR(RequireDefault(j, file, "layers_pattern", nullptr,
                                 "layer selection by pattern"));
  if (j.contains("layers_to_transform") && !j["layers_to_transform"].is_null()) {
    const json& l = j["layers_to_transform"];
    const json list = l.is_array() ? l : json::array({l});
    for (const json& layer : list) {
      if (!layer.is_number_integer() || layer.get<int64_t>() < 0 || layer.get<int64_t>() > (1 << 20)) {
        return Bad(file, absl::StrCat("\"layers_to_transform\" is ", l.dump(),
                                      "; allowed: a layer index (0 up to the model's layer count - 1), or a "
                                      "list of them"));
      }
      c.layers.insert(static_cast<int>(layer.get<int64_t>()));
    }
    if (c.layers.empty()) return Bad(file, "\"layers_to_transform\" is an empty list; give null for every layer");
  }
  if (!j.contains("target_modules"))
    return Bad(file, "\"target_modules\" is missing");
  const json& targets = j["target_modules"];
  std::vector<std::string> names;
  if (targets.is_string()) {
    if (targets.get<std::string>() != "all-linear") {
      return Bad(file, absl::StrCat("\"target_modules\" is the pattern ",
                                    targets.dump(),
                                    "; give a list of q_proj, k_proj, v_proj, "
                                    "o_proj, gate_proj, up_proj, down_proj "
                                    "or \"all-linear\""));
    }
    for (int t = 0; t < kNumLoraTargets; ++t)
      names.push_back(LoraTargetName(static_cast<LoraTarget>(t)));
  } else if (targets.is_array()) {
    for (const json& t : targets) {
      if (!t.is_string())
        return Bad(file, "\"target_modules\" entries must be strings");
      names.push_back(t.get<std::string>());
    }
  } else {
    return Bad(file, "\"target_modules\" must be a list of module names");
  }
  for (const std::string& n : names) {
    const auto t = TargetNamed(n);
    if (!t) {
      return Bad(file, absl::StrCat("target module \"", n,
                                    "\" is not one of q_proj, k_proj, v_proj, "
                                    "o_proj, gate_proj, up_proj, down_proj"));
    }
    c.targets.insert(*t);
  }
  if (c.targets.empty()) return Bad(file, "\"target_modules\" is empty");
  return c;
}

// The global [out, in] of a projection.
std::pair<int64_t, int64_t> Shape(const ModelConfig& c, LoraTarget t) {
  switch (t) {
    case LoraTarget::kQ:
      return {c.q_dim(), c.hidden_size};
    case LoraTarget::kK:
    case LoraTarget::kV:
      return {c.kv_dim(), c.hidden_size};
    case LoraTarget::kO:
      return {c.hidden_size, c.q_dim()};
    case LoraTarget::kGate:
    case LoraTarget::kUp:
      return {c.intermediate_size, c.hidden_size};
    case LoraTarget::kDown:
      return {c.hidden_size, c.intermediate_size};
  }
  return {0, 0};
}

// This rank's [begin, count) of the projection's output rows (column-parallel)
// or input columns (row-parallel).
std::pair<int64_t, int64_t> Slice(const ModelConfig& c,
                                  const TensorParallel& tp, LoraTarget t) {
  const int64_t d = c.head_dim;
  switch (t) {
    case LoraTarget::kQ:
    case LoraTarget::kO:
      return {tp.q_head_begin * d, tp.num_q_heads * d};
    case LoraTarget::kK:
    case LoraTarget::kV:
      return {tp.kv_head_begin * d, tp.num_kv_heads * d};
    case LoraTarget::kGate:
    case LoraTarget::kUp:
    case LoraTarget::kDown:
      return {tp.ffn_begin, tp.ffn_size};
  }
  return {0, 0};
}

bool RowParallel(LoraTarget t) {
  return t == LoraTarget::kO || t == LoraTarget::kDown;
}

absl::StatusOr<std::vector<float>> ReadF32(const std::string& file,
                                           const std::string& name,
                                           const TensorEntry& e,
                                           absl::string_view data) {
  const int64_t n = e.NumElements();
  std::vector<float> out(n);
  const char* p = data.data() + e.begin;
  switch (e.dtype) {
    case DType::kF32:
      std::memcpy(out.data(), p, n * 4);
      break;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        out[i] = Bf16ToF32(v);
      }
      break;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        out[i] = F16ToF32(v);
      }
      break;
    default:
      return Bad(file, absl::StrCat("tensor ", name, " is ", DTypeName(e.dtype),
                                    "; BF16, F16 or F32 are read"));
  }
  for (float v : out) {
    if (!std::isfinite(v))
      return Bad(file, absl::StrCat("tensor ", name,
                                    " holds a value that is not finite"));
  }
  return out;
}

// Sizes and modification times: a folder rewritten after it was loaded is noticed when it is read again.
std::string Fingerprint(std::initializer_list<std::string> files) {
  std::string out;
  for (const std::string& f : files) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(f, ec);
    const auto time = std::filesystem::last_write_time(f, ec);
    absl::StrAppend(&out, f, ":", ec ? 0 : size, ":", ec ? 0 : time.time_since_epoch().count(), ";");
  }
  return out;
}

// Rows [begin, begin + count) of B ([out, r] as peft stores it) as B^T [r, count].
std::vector<float> TransposeRows(const std::vector<float>& b, int64_t begin, int64_t count, int rank) {
  std::vector<float> t(static_cast<size_t>(count) * rank);
  for (int64_t o = 0; o < count; ++o) {
    for (int j = 0; j < rank; ++j) t[j * count + o] = b[(begin + o) * rank + j];
  }
  return t;
}

}  // namespace

absl::StatusOr<std::shared_ptr<LoraAdapter>> LoadLoraAdapter(
    const std::string& dir, const ModelConfig& config,
    const TensorParallel& tp) {
  ASSIGN_OR_RETURN(const LoraConfig lc,
                   ParseConfig(dir + "/adapter_config.json"));
  const std::string file = dir + "/adapter_model.safetensors";
  ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::Open(file));
  ASSIGN_OR_RETURN(const SafetensorsHeader header,
                   ParseSafetensors(mapped.bytes(), file));
  auto a = std::make_shared<LoraAdapter>();
  a->fingerprint = Fingerprint({dir + "/adapter_config.json", file});
  a->rank = lc.rank;
  a->scaling = lc.scaling;
  for (LoraTarget t : lc.targets)
    a->target_modules.push_back(LoraTargetName(t));
  a->layers.resize(config.num_layers);
  if (!lc.layers.empty() && *lc.layers.rbegin() >= config.num_layers) {
    return Bad(dir + "/adapter_config.json",
               absl::StrCat("\"layers_to_transform\" names layer ", *lc.layers.rbegin(), "; this model has layers 0..",
                            config.num_layers - 1));
  }
  const std::string prefix =
      "base_model.model." + config.tensor_prefix + "layers.";
  std::set<std::string> used;
  int64_t adapted = 0;
  for (int layer = 0; layer < config.num_layers; ++layer) {
    for (int ti = 0; ti < kNumLoraTargets; ++ti) {
      const LoraTarget t = static_cast<LoraTarget>(ti);
      const bool mlp = t == LoraTarget::kGate || t == LoraTarget::kUp ||
                       t == LoraTarget::kDown;
      const std::string base = absl::StrCat(
          prefix, layer, mlp ? ".mlp." : ".self_attn.", LoraTargetName(t));
      const std::string a_name = base + ".lora_A.weight",
                        b_name = base + ".lora_B.weight";
      const auto ia = header.tensors.find(a_name),
                 ib = header.tensors.find(b_name);
      if (ia == header.tensors.end() && ib == header.tensors.end())
        continue;  // layers_to_transform left it out
      if (!lc.layers.empty() && !lc.layers.contains(layer)) {
        return Bad(file, absl::StrCat("has ", ia != header.tensors.end() ? a_name : b_name,
                                      " but adapter_config.json's layers_to_transform leaves layer ", layer, " out"));
      }
      if (ia == header.tensors.end() || ib == header.tensors.end()) {
        return Bad(
            file,
            absl::StrCat("has ", ia == header.tensors.end() ? b_name : a_name,
                         " without ",
                         ia == header.tensors.end() ? a_name : b_name));
      }
      if (!lc.targets.count(t)) {
        return Bad(file,
                   absl::StrCat("has ", a_name,
                                " but adapter_config.json does not target ",
                                LoraTargetName(t)));
      }
      const auto [out, in] = Shape(config, t);
      const std::vector<int64_t> want_a = {lc.rank, in},
                                 want_b = {out, lc.rank};
      if (ia->second.shape != want_a || ib->second.shape != want_b) {
        return Bad(file, absl::StrCat(base, ": lora_A is [",
                                      absl::StrJoin(ia->second.shape, ", "),
                                      "] and lora_B [",
                                      absl::StrJoin(ib->second.shape, ", "),
                                      "]; this model (r ", lc.rank, ") needs [",
                                      lc.rank, ", ", in, "] and [", out, ", ",
                                      lc.rank, "]"));
      }
      absl::string_view data = mapped.bytes().substr(header.data_offset);
      ASSIGN_OR_RETURN(std::vector<float> wa,
                       ReadF32(file, a_name, ia->second, data));
      ASSIGN_OR_RETURN(std::vector<float> wb,
                       ReadF32(file, b_name, ib->second, data));
      used.insert(a_name);
      used.insert(b_name);
      LoraPair& p = a->layers[layer][ti];
      p.rank = lc.rank;
      const auto [begin, count] = Slice(config, tp, t);
      if (RowParallel(t)) {  // A's columns [begin, begin + count), all of B
        p.in = count;
        p.out = out;
        p.a.resize(lc.rank * count);
        for (int rr = 0; rr < lc.rank; ++rr) {
          std::copy_n(wa.begin() + rr * in + begin, count,
                      p.a.begin() + rr * count);
        }
        p.b = TransposeRows(wb, 0, out, lc.rank);
      } else {  // all of A, B's rows [begin, begin + count)
        p.in = in;
        p.out = count;
        p.a = std::move(wa);
        p.b = TransposeRows(wb, begin, count, lc.rank);
      }
      ++adapted;
    }
  }
  for (const auto& [name, entry] : header.tensors) {
    if (!used.count(name)) {
      return Bad(file,
                 absl::StrCat(
                     "tensor ", name,
                     " is not a LoRA A or B of a Gemma layer this model has (",
                     config.num_layers, " layers, names ", prefix,
                     "<i>.self_attn|mlp.<module>.lora_A|B.weight)"));
    }
  }
  if (adapted == 0) return Bad(file, "holds no LoRA tensors");
  return a;
}

}  // namespace gemma
