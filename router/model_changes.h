// What a request changes in the model it runs on: a LoRA adapter by name and
// interventions on its forward pass, checked against the served model before
// the request is queued.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/step_protocol.h"
#include "gemma/v1/gemma.pb.h"
#include "gemma/worker/v1/worker.pb.h"
#include "google/protobuf/repeated_field.h"

namespace gemma {

inline constexpr int kMaxInterventions = 64;

struct ModelChanges {
  std::string adapter;  // empty: the base model
  std::vector<Intervention> interventions;
};

// InvalidArgument naming the field and its range: an adapter no group holds
// (`adapter_loaded` says), more than kMaxInterventions interventions, a layer,
// head or vector size that does not fit `model`, a value not finite.
// `prompt_len` places POSITIONS_PROMPT and POSITIONS_GENERATED.
absl::StatusOr<ModelChanges> ModelChangesOf(
    const worker::v1::ModelInfo& model, const std::string& adapter,
    const google::protobuf::RepeatedPtrField<v1::Intervention>& interventions,
    int32_t prompt_len, bool adapter_loaded);

}  // namespace gemma
