#include "router/activation_request.h"

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "shard/model/dtype.h"

namespace gemma {
namespace {

const char* KindName(v1::ActivationKind kind) {
  switch (kind) {
    case v1::ACTIVATION_KIND_RESIDUAL:
      return "RESIDUAL";
    case v1::ACTIVATION_KIND_ATTENTION_OUTPUT:
      return "ATTENTION_OUTPUT";
    case v1::ACTIVATION_KIND_MLP_OUTPUT:
      return "MLP_OUTPUT";
    default:
      return "unknown";
  }
}

// The engine's point for a request's; InvalidArgument naming points[i] when `model` has no such point.
absl::StatusOr<ActivationPoint> PointOf(int i, const v1::ActivationPoint& p, const worker::v1::ModelInfo& model) {
  ActivationPoint out;
  out.index = p.index();
  // RESIDUAL counts Hugging Face's hidden_states: num_layers + 1 of them, the last after the final norm.
  int32_t count = model.num_layers();
  switch (p.kind()) {
    case v1::ACTIVATION_KIND_RESIDUAL:
      out.kind = ActivationKind::kResidual;
      count = model.num_layers() + 1;
      break;
    case v1::ACTIVATION_KIND_ATTENTION_OUTPUT:
      out.kind = ActivationKind::kAttentionOutput;
      break;
    case v1::ACTIVATION_KIND_MLP_OUTPUT:
      out.kind = ActivationKind::kMlpOutput;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("activations.points[", i, "].kind is ", p.kind(),
                                                     "; allowed: RESIDUAL, ATTENTION_OUTPUT, MLP_OUTPUT"));
  }
  if (p.index() < 0 || p.index() >= count) {
    return absl::InvalidArgumentError(absl::StrCat("activations.points[", i, "].index is ", p.index(), " for ",
                                                   KindName(p.kind()), "; allowed: 0 to ", count - 1));
  }
  return out;
}

int64_t DtypeSize(v1::ActivationDtype dtype) { return dtype == v1::ACTIVATION_DTYPE_BFLOAT16 ? 2 : 4; }

}  // namespace

absl::StatusOr<ActivationAsk> ActivationAskOf(const v1::ActivationRequest& request, const worker::v1::ModelInfo& model,
                                              int32_t len, int64_t max_bytes) {
  ActivationAsk ask;
  const int64_t residual = request.all_residual() ? model.num_layers() + 1 : 0;
  if (residual + request.points_size() > kMaxActivationPoints) {
    return absl::InvalidArgumentError(absl::StrCat("activations asks for ", residual + request.points_size(),
                                                   " points (all_residual counts ", residual, "); allowed: up to ",
                                                   kMaxActivationPoints));
  }
  if (request.dtype() != v1::ACTIVATION_DTYPE_FLOAT32 && request.dtype() != v1::ACTIVATION_DTYPE_BFLOAT16) {
    return absl::InvalidArgumentError(
        absl::StrCat("activations.dtype is ", request.dtype(), "; allowed: FLOAT32, BFLOAT16"));
  }
  ask.dtype = request.dtype();
  for (int32_t i = 0; i < residual; ++i) ask.points.push_back({ActivationKind::kResidual, i});
  for (int i = 0; i < request.points_size(); ++i) {
    auto point = PointOf(i, request.points(i), model);
    if (!point.ok()) return point.status();
    for (const ActivationPoint& p : ask.points) {
      if (p.kind == point->kind && p.index == point->index) {
        return absl::InvalidArgumentError(absl::StrCat(
            "activations.points[", i, "] (", KindName(request.points(i).kind()), " ", point->index, ") is asked twice",
            request.all_residual() ? " (all_residual asks every RESIDUAL index)" : ""));
      }
    }
    ask.points.push_back(*point);
  }
  if (ask.points.empty()) {
    if (request.positions_size() > 0) {
      return absl::InvalidArgumentError("activations.positions is set but no point is asked (points, all_residual)");
    }
    return ask;
  }
  for (int i = 0; i < request.positions_size(); ++i) {
    const int32_t p = request.positions(i);
    if (p < 0 || p >= len) {
      return absl::InvalidArgumentError(absl::StrCat("activations.positions[", i, "] is ", p, "; allowed: 0 to ",
                                                     len - 1, " (the scored sequence, <bos> at 0)"));
    }
    if (i > 0 && p <= request.positions(i - 1)) {
      return absl::InvalidArgumentError(absl::StrCat("activations.positions[", i, "] is ", p, " after ",
                                                     request.positions(i - 1), "; give them strictly increasing"));
    }
    ask.positions.push_back(p);
  }
  if (ask.positions.empty()) {
    for (int32_t p = 0; p < len; ++p) ask.positions.push_back(p);
  }
  ask.bytes = static_cast<int64_t>(ask.points.size()) * static_cast<int64_t>(ask.positions.size()) *
              model.hidden_size() * DtypeSize(ask.dtype);
  if (ask.bytes > max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("the activations asked take ", ask.bytes, " bytes (",
                                                     ask.points.size(), " points x ", ask.positions.size(),
                                                     " positions x ", model.hidden_size(), " x ", DtypeSize(ask.dtype),
                                                     " bytes); the router's cap (--max_activation_bytes) is ",
                                                     max_bytes, ": ask fewer points or positions, or BFLOAT16"));
  }
  return ask;
}

int64_t ScoreResponseBytesEstimate(const ActivationAsk& ask, int32_t len, int32_t top_logprobs) {
  // Varint ids take up to 5 bytes and a float 4, plus tags and lengths: 16 per token covers ids and logprobs,
  // 16 + a 16-byte piece each alternative.
  const int64_t scores = static_cast<int64_t>(len) * (16 + top_logprobs * 32);
  // Each activation's fields besides its data: kind, index, shape, dtype, tags, and its positions (5 bytes each).
  const int64_t framing =
      static_cast<int64_t>(ask.points.size()) * (64 + 5 * static_cast<int64_t>(ask.positions.size()));
  return scores + framing + ask.bytes;
}

v1::Activation EncodeActivation(const ActivationAsk& ask, size_t point, int32_t hidden,
                                const std::vector<float>& values) {
  v1::Activation a;
  switch (ask.points[point].kind) {
    case ActivationKind::kResidual:
      a.set_kind(v1::ACTIVATION_KIND_RESIDUAL);
      break;
    case ActivationKind::kAttentionOutput:
      a.set_kind(v1::ACTIVATION_KIND_ATTENTION_OUTPUT);
      break;
    case ActivationKind::kMlpOutput:
      a.set_kind(v1::ACTIVATION_KIND_MLP_OUTPUT);
      break;
  }
  a.set_index(ask.points[point].index);
  a.add_shape(static_cast<int32_t>(ask.positions.size()));
  a.add_shape(hidden);
  a.set_dtype(ask.dtype);
  a.mutable_positions()->Add(ask.positions.begin(), ask.positions.end());
  std::string* data = a.mutable_data();
  // Little-endian on the wire, as the hosts this runs on store floats.
  if (ask.dtype == v1::ACTIVATION_DTYPE_BFLOAT16) {
    data->resize(values.size() * sizeof(uint16_t));
    for (size_t i = 0; i < values.size(); ++i) {
      const uint16_t bits = F32ToBf16(values[i]);
      std::memcpy(data->data() + i * sizeof(bits), &bits, sizeof(bits));
    }
  } else {
    data->resize(values.size() * sizeof(float));
    std::memcpy(data->data(), values.data(), data->size());
  }
  return a;
}

}  // namespace gemma
