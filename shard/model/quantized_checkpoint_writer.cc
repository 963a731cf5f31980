#include "shard/model/quantized_checkpoint_writer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"
#include "shard/checkpoint/checkpoint_writer.h"
#include "shard/checkpoint/progress.h"
#include "shard/model/dtype.h"
#include "shard/model/model_weights.h"
#include "shard/model/packed_int4.h"
#include "shard/model/quantize.h"

namespace gemma {
namespace {

bool IsProjection(const std::string& name, const std::string& text_prefix) {
  if (!name.starts_with(text_prefix + "layers.")) return false;
  for (const char* p : {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                        "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                        "mlp.down_proj.weight"}) {
    if (name.ends_with(p)) return true;
  }
  return false;
}

struct PackedTensors {
  std::vector<int32_t> qweight, qzeros, g_idx;
  std::vector<uint16_t> scales;
};

// w [out, in] -> the method's tensors. `name` for the error when a group's scale is past f16's range.
absl::StatusOr<PackedTensors> Pack(const std::string& name, const std::vector<float>& w, int64_t out, int64_t in,
                                   int group, bool awq) {
  PackedTensors p;
  const int64_t groups = in / group;
  p.qweight.assign(in * out / 8, 0);
  p.qzeros.assign(groups * out / 8, 0);
  p.scales.resize(groups * out);
  for (int64_t n = 0; n < out; ++n) {
    const int nibble = awq ? kAwqNibbleOfColumn[n % 8] : static_cast<int>(n % 8);
    for (int64_t g = 0; g < groups; ++g) {
      const float* x = &w[n * in + g * group];
      float lo = 0, hi = 0;
      for (int k = 0; k < group; ++k) lo = std::min(lo, x[k]), hi = std::max(hi, x[k]);
      float scale = hi > lo ? (hi - lo) / 15.0f : 1.0f;
      int zero = static_cast<int>(std::clamp(std::nearbyint(-lo / scale), 0.0f, 15.0f));
      if (!awq && zero == 0) {
        zero = 1;
        scale = hi > 0 ? hi / 14.0f : 1.0f;
      }
      // The formats store scales as f16: a scale past its range would load as an infinity (and be refused then).
      if (scale > 65504.0f) {
        return absl::InvalidArgumentError(absl::StrCat(
            name, " row ", n, ", columns ", g * group, "..", g * group + group - 1, " spans ", lo, "..", hi,
            ": its 4-bit scale (", scale, ") is past f16's largest value (65504), which the format stores it in"));
      }
      p.scales[g * out + n] = F32ToF16(scale);
      const uint32_t stored_zero = static_cast<uint32_t>(awq ? zero : zero - 1);
      p.qzeros[g * (out / 8) + n / 8] |= static_cast<int32_t>(stored_zero << (4 * nibble));
      for (int k = 0; k < group; ++k) {
        const int64_t kk = g * group + k;
        const uint32_t code =
            static_cast<uint32_t>(std::clamp(std::nearbyint(x[k] / scale) + static_cast<float>(zero), 0.0f, 15.0f));
        if (awq) {
          p.qweight[kk * (out / 8) + n / 8] |= static_cast<int32_t>(code << (4 * nibble));
        } else {
          p.qweight[(kk / 8) * out + n] |= static_cast<int32_t>(code << (4 * (kk % 8)));
        }
      }
    }
  }
  if (!awq) {
    p.g_idx.resize(in);
    for (int64_t k = 0; k < in; ++k) p.g_idx[k] = static_cast<int32_t>(k / group);
  }
  return p;
}

// The quantization_config AutoGPTQ, AutoAWQ or llm-compressor (FP8 weights, activations left alone) write.
nlohmann::json QuantizationConfig(CheckpointQuantization::Method method, int group_size) {
  switch (method) {
    case CheckpointQuantization::Method::kAwq:
      return {{"quant_method", "awq"}, {"bits", 4}, {"group_size", group_size}, {"zero_point", true},
              {"version", "gemm"}};
    case CheckpointQuantization::Method::kFp8: {
      const nlohmann::json weights = {{"num_bits", 8},     {"type", "float"},       {"strategy", "channel"},
                                      {"symmetric", true}, {"dynamic", false},      {"group_size", nullptr},
                                      {"observer", "minmax"}, {"block_structure", nullptr}, {"actorder", nullptr}};
      return {{"quant_method", "compressed-tensors"},
              {"format", "float-quantized"},
              {"quantization_status", "compressed"},
              {"config_groups",
               {{"group_0",
                 {{"targets", {"Linear"}},
                  {"weights", weights},
                  {"input_activations", nullptr},
                  {"output_activations", nullptr}}}}},
              {"ignore", {"lm_head"}},
              {"kv_cache_scheme", nullptr}};
    }
    default:
      return {{"quant_method", "gptq"}, {"bits", 4},           {"group_size", group_size},
              {"desc_act", false},      {"sym", false},        {"checkpoint_format", "gptq"}};
  }
}

template <class T>
absl::string_view BytesOf(const std::vector<T>& v) {
  return {reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T)};
}

}  // namespace

absl::Status WriteQuantizedCheckpoint(const Checkpoint& in, const std::string& out_dir,
                                      CheckpointQuantization::Method method, int group_size) {
  if (method == CheckpointQuantization::Method::kNone) {
    return absl::InvalidArgumentError("a quantized checkpoint is written as gptq, awq or compressed-tensors fp8");
  }
  const bool fp8 = method == CheckpointQuantization::Method::kFp8;
  if (in.config().quantization.method != CheckpointQuantization::Method::kNone) {
    return absl::InvalidArgumentError(absl::StrCat(in.dir(), " is already quantized (",
                                                   QuantizationMethodName(in.config().quantization.method), ")"));
  }
  if (!fp8 && group_size != 32 && group_size != 64 && group_size != 128) {
    return absl::InvalidArgumentError(absl::StrCat("group size ", group_size, " is invalid; allowed: 32, 64, 128"));
  }
  const bool awq = method == CheckpointQuantization::Method::kAwq;
  std::error_code ec;
  if (std::filesystem::exists(out_dir) && std::filesystem::equivalent(out_dir, in.dir(), ec)) {
    return absl::InvalidArgumentError(absl::StrCat(out_dir, " is the input checkpoint itself; write to another directory"));
  }
  std::filesystem::create_directories(out_dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(out_dir, ": cannot create: ", ec.message()));
  const std::string prefix = TextTensorPrefix(in);
  const std::vector<std::string> names = in.TensorNames();
  // Every tensor's bytes are kept until the file is written in one go.
  std::vector<std::vector<char>> owned;
  owned.reserve(names.size() * 4);
  auto keep = [&](absl::string_view bytes) -> absl::string_view {
    owned.emplace_back(bytes.begin(), bytes.end());
    return {owned.back().data(), owned.back().size()};
  };
  std::vector<TensorToWrite> tensors;
  Progress progress(absl::StrCat("quantizing ", in.dir(), " to ", QuantizationMethodName(method)),
                    static_cast<int64_t>(names.size()));
  int64_t done = 0;
  for (const std::string& name : names) {
    progress.Update(++done);
    ASSIGN_OR_RETURN(const StoredTensor t, in.Raw(name));
    if (!IsProjection(name, prefix)) {
      tensors.push_back({name, t.dtype, t.shape, keep({t.data, t.num_bytes})});
      continue;
    }
    if (t.shape.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(in.dir(), ": ", name, " has ", t.shape.size(),
                                                     " dimensions; a projection has 2"));
    }
    ASSIGN_OR_RETURN(const StoredTensor f, in.Get(name, t.shape));
    const int64_t out = t.shape[0], cols = t.shape[1];
    std::vector<float> w(out * cols);
    for (int64_t i = 0; i < out * cols; ++i) {
      w[i] = FloatElementAsF32(f.dtype, f.data, i);
      // A NaN would become a NaN scale or, cast to a code, anything at all.
      if (!std::isfinite(w[i])) return NonFiniteWeight(name, std::isnan(w[i]), absl::StrCat(i / cols, ", ", i % cols));
    }
    const std::string module = name.substr(0, name.size() - std::string(".weight").size());
    if (fp8) {
      MatrixView source;
      source.format = WeightFormat::kF32;
      source.rows = out;
      source.cols = source.stride = cols;
      source.f32 = w.data();
      std::vector<uint8_t> memory(QuantizedBytes(WeightFormat::kFp8, out, cols, 0));
      const MatrixView q = QuantizeInto(source, 0, out, 0, cols, WeightFormat::kFp8, 0, memory.data());
      tensors.push_back({module + ".weight", DType::kF8E4M3, {out, cols}, keep({reinterpret_cast<const char*>(q.codes),
                                                                                 static_cast<size_t>(out * cols)})});
      tensors.push_back({module + ".weight_scale", DType::kF32, {out, 1},
                         keep({reinterpret_cast<const char*>(q.scales), static_cast<size_t>(out) * 4})});
      continue;
    }
    if (out % 8 != 0 || cols % group_size != 0) {
      const int fits = out % 8 == 0 ? PickGroupSize(cols, group_size, {}) : 0;
      return absl::InvalidArgumentError(absl::StrCat(
          name, " is [", out, ", ", cols, "]: 4-bit packing needs outputs in eights and inputs in whole groups of ",
          group_size, fits > 0 ? absl::StrCat("; --int4-group-size ", fits, " fits") : ""));
    }
    ASSIGN_OR_RETURN(const PackedTensors p, Pack(name, w, out, cols, group_size, awq));
    tensors.push_back({module + ".qweight", DType::kI32,
                       awq ? std::vector<int64_t>{cols, out / 8} : std::vector<int64_t>{cols / 8, out},
                       keep(BytesOf(p.qweight))});
    tensors.push_back({module + ".qzeros", DType::kI32, {cols / group_size, out / 8}, keep(BytesOf(p.qzeros))});
    tensors.push_back({module + ".scales", DType::kF16, {cols / group_size, out}, keep(BytesOf(p.scales))});
    if (!awq) tensors.push_back({module + ".g_idx", DType::kI32, {cols}, keep(BytesOf(p.g_idx))});
  }
  progress.Finish();
  RETURN_IF_ERROR(WriteSafetensors(out_dir + "/model.safetensors", tensors, {{"format", "pt"}}));

  std::ifstream config_in(in.dir() + "/config.json");
  std::stringstream text;
  text << config_in.rdbuf();
  nlohmann::json config = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) return absl::InvalidArgumentError(in.dir() + "/config.json: not valid JSON");
  config["quantization_config"] = QuantizationConfig(method, group_size);
  std::ofstream config_out(out_dir + "/config.json");
  config_out << config.dump(2) << "\n";
  if (!config_out.flush()) return absl::PermissionDeniedError(absl::StrCat(out_dir, "/config.json: cannot write"));
  // Tokenizer and generation files travel as they are.
  for (const auto& entry : std::filesystem::directory_iterator(in.dir())) {
    const std::string file = entry.path().filename().string();
    if (!entry.is_regular_file() || file == "config.json" || file.ends_with(".safetensors") ||
        file == "model.safetensors.index.json") {
      continue;
    }
    std::filesystem::copy_file(entry.path(), out_dir + "/" + file, std::filesystem::copy_options::overwrite_existing,
                               ec);
    if (ec) return absl::PermissionDeniedError(absl::StrCat(out_dir, "/", file, ": cannot write: ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace gemma
