#include "tools/intervention_flags.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/status_macros.h"

namespace gemma {
namespace {

// The whole file; empty when it cannot be read.
std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status BadValue(const std::string& flag, const std::string& value,
                      const std::string& why) {
  return absl::InvalidArgumentError(
      absl::StrCat("--", flag, " \"", value, "\": ", why));
}

// LAYER:REST, the layer in [0, num_layers).
absl::StatusOr<std::pair<int32_t, std::string>> LayerAndRest(
    const std::string& flag, const std::string& value, const char* rest_name,
    const ModelConfig& config) {
  const std::vector<std::string> parts =
      absl::StrSplit(value, absl::MaxSplits(':', 1));
  int32_t layer;
  if (parts.size() != 2 || parts[1].empty() ||
      !absl::SimpleAtoi(parts[0], &layer)) {
    return BadValue(flag, value, absl::StrCat("expected LAYER:", rest_name));
  }
  if (layer < 0 || layer >= config.num_layers) {
    return BadValue(flag, value,
                    absl::StrCat("layer ", layer, " is outside [0, ",
                                 config.num_layers, ")"));
  }
  return std::make_pair(layer, parts[1]);
}

absl::StatusOr<Intervention> Steer(const std::string& value,
                                   const ModelConfig& config) {
  ASSIGN_OR_RETURN(auto lr, LayerAndRest("steer", value, "FILE", config));
  const std::string bytes = ReadFileBytes(lr.second);
  const size_t want = static_cast<size_t>(config.hidden_size) * 4;
  if (bytes.size() != want) {
    return BadValue("steer", value,
                    absl::StrCat("file of ", bytes.size(),
                                 " bytes (or unreadable); expected ", want,
                                 " bytes: hidden_size ", config.hidden_size,
                                 " little-endian float32 values"));
  }
  Intervention iv;
  iv.kind = InterventionKind::kSteer;
  iv.layer = lr.first;
  iv.vector.resize(config.hidden_size);
  std::memcpy(iv.vector.data(), bytes.data(), want);
  for (size_t i = 0; i < iv.vector.size(); ++i) {
    if (!std::isfinite(iv.vector[i]))
      return BadValue("steer", value,
                      absl::StrCat("value ", i, " is not finite"));
  }
  return iv;
}

absl::StatusOr<Intervention> Scale(const std::string& flag,
                                   InterventionKind kind,
                                   const std::string& value,
                                   const ModelConfig& config) {
  ASSIGN_OR_RETURN(auto lr, LayerAndRest(flag, value, "FACTOR", config));
  double factor;
  if (!absl::SimpleAtod(lr.second, &factor) || !std::isfinite(factor) ||
      std::abs(factor) > 3.0e38) {
    return BadValue(flag, value, "the factor must be a finite number");
  }
  Intervention iv;
  iv.kind = kind;
  iv.layer = lr.first;
  iv.factor = static_cast<float>(factor);
  return iv;
}

absl::StatusOr<Intervention> Ablate(const std::string& value,
                                    const ModelConfig& config) {
  ASSIGN_OR_RETURN(auto lr, LayerAndRest("ablate-head", value, "HEAD", config));
  int32_t head;
  if (!absl::SimpleAtoi(lr.second, &head) || head < 0 ||
      head >= config.num_heads) {
    return BadValue(
        "ablate-head", value,
        absl::StrCat("head \"", lr.second, "\" is not a query head in [0, ",
                     config.num_heads, ")"));
  }
  Intervention iv;
  iv.kind = InterventionKind::kAblateHead;
  iv.layer = lr.first;
  iv.head = head;
  return iv;
}

}  // namespace

void DeclareInterventionFlags(Args& args) {
  args.RepeatedFlag(
          "steer",
          "LAYER:FILE: add the vector in FILE (hidden_size little-endian "
          "float32) to the residual "
          "stream after decoder layer LAYER (0-based), at every position")
      .RepeatedFlag("scale-mlp",
                    "LAYER:FACTOR: multiply the MLP term layer LAYER adds to "
                    "the residual stream (after any post-norm) by FACTOR")
      .RepeatedFlag("scale-attn",
                    "LAYER:FACTOR: multiply the attention term layer LAYER "
                    "adds to the residual stream (after any post-norm) by FACTOR")
      .RepeatedFlag(
          "ablate-head",
          "LAYER:HEAD: zero query head HEAD's attention output in layer LAYER");
}

absl::StatusOr<std::vector<Intervention>> InterventionsFromFlags(
    const Args& args, const ModelConfig& config) {
  std::vector<Intervention> out;
  for (const std::string& v : args.GetAll("steer")) {
    ASSIGN_OR_RETURN(Intervention iv, Steer(v, config));
    out.push_back(std::move(iv));
  }
  for (const std::string& v : args.GetAll("scale-mlp")) {
    ASSIGN_OR_RETURN(
        Intervention iv,
        Scale("scale-mlp", InterventionKind::kScaleMlp, v, config));
    out.push_back(std::move(iv));
  }
  for (const std::string& v : args.GetAll("scale-attn")) {
    ASSIGN_OR_RETURN(
        Intervention iv,
        Scale("scale-attn", InterventionKind::kScaleAttention, v, config));
    out.push_back(std::move(iv));
  }
  for (const std::string& v : args.GetAll("ablate-head")) {
    ASSIGN_OR_RETURN(Intervention iv, Ablate(v, config));
    out.push_back(std::move(iv));
  }
  return out;
}

void DeclareHiddenStatesFlag(Args& args) {
  args.Flag("hidden-states",
            "all or I,J,...: with --json, add hidden_states, one "
            "[positions][hidden] array per index, as Hugging "
            "Face's output_hidden_states: 0 the scaled embedding, i the output "
            "of layer i-1, num_layers the final "
            "norm's output");
}

absl::StatusOr<std::vector<ActivationPoint>> HiddenStatesFromFlag(
    const Args& args, const ModelConfig& config) {
  std::vector<ActivationPoint> out;
  if (!args.Has("hidden-states")) return out;
  if (args.Get("hidden-states") == "all") {
    for (int i = 0; i <= config.num_layers; ++i)
      out.push_back({ActivationKind::kResidual, i});
    return out;
  }
  auto indices = args.GetIntList("hidden-states", 0, config.num_layers);
  if (!indices.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(indices.status().message(), " (num_layers is ",
                     config.num_layers, "), or \"all\""));
  }
  for (int32_t i : *indices) out.push_back({ActivationKind::kResidual, i});
  return out;
}

}  // namespace gemma
