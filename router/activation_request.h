// The activations a Score request reads out: checked against the served model and the router's caps before the
// request runs, and encoded for the response after.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/step_protocol.h"
#include "gemma/v1/gemma.pb.h"
#include "gemma/worker/v1/worker.pb.h"

namespace gemma {

inline constexpr int kMaxActivationPoints = 1024;

// A validated ScoreRequest.activations.
struct ActivationAsk {
  std::vector<ActivationPoint> points;  // all_residual's first, then the request's points
  std::vector<int32_t> positions;       // strictly increasing; every position when the request named none
  v1::ActivationDtype dtype = v1::ACTIVATION_DTYPE_FLOAT32;
  int64_t bytes = 0;  // of the activation data: points x positions x hidden_size x dtype size
};

// InvalidArgument naming the field and its range: more than kMaxActivationPoints points, a kind or index that
// `model` does not have, a point asked twice, a position outside [0, `len`) or out of order, an unknown dtype.
// ResourceExhausted when the data would pass `max_bytes` (the router's --max_activation_bytes).
absl::StatusOr<ActivationAsk> ActivationAskOf(const v1::ActivationRequest& request, const worker::v1::ModelInfo& model,
                                              int32_t len, int64_t max_bytes);

// About what a unary ScoreResponse for a sequence of `len` tokens takes on the wire: the scores, their alternatives
// (text pieces taken as 16 bytes) and the activations with their framing.
int64_t ScoreResponseBytesEstimate(const ActivationAsk& ask, int32_t len, int32_t top_logprobs);

// One point's activation: `values` is [ask.positions, hidden] f32 in position order.
v1::Activation EncodeActivation(const ActivationAsk& ask, size_t point, int32_t hidden,
                                const std::vector<float>& values);

}  // namespace gemma
