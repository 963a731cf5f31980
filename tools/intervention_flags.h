// The flags that change a forward pass or read activations out of it (gemma
// score and generate): --steer,
// --scale-mlp, --scale-attn, --ablate-head (each repeatable, applied at every
// position) and --hidden-states.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/step_protocol.h"
#include "shard/model/model_config.h"
#include "tools/args.h"

namespace gemma {

// Declares --steer LAYER:FILE, --scale-mlp LAYER:FACTOR, --scale-attn
// LAYER:FACTOR and --ablate-head LAYER:HEAD.
void DeclareInterventionFlags(Args& args);
// Their values, checked against the model; InvalidArgument naming the flag, the
// value and what is allowed.
absl::StatusOr<std::vector<Intervention>> InterventionsFromFlags(
    const Args& args, const ModelConfig& config);

// Declares --hidden-states all|I,J,...
void DeclareHiddenStatesFlag(Args& args);
// Residual points (Hugging Face's output_hidden_states indices, 0..num_layers)
// of --hidden-states; empty without it.
absl::StatusOr<std::vector<ActivationPoint>> HiddenStatesFromFlag(
    const Args& args, const ModelConfig& config);


}  // namespace gemma
