// Reads a LoRA adapter as peft saves it (adapter_config.json +
// adapter_model.safetensors) and slices it for one rank.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "shard/model/lora_adapter.h"
#include "shard/model/model_config.h"
#include "shard/model/tensor_parallel.h"

namespace gemma {

inline constexpr int kMaxLoraRank = 64;

// Which LoRA adapters a backend can run: of rank up to max_rank (0: none at all), and at most max_per_step distinct
// adapters in one step (0: any number). A step beyond them is refused (InvalidArgument) before anything runs, so
// the worker refuses such adapters when they are loaded and the router's scheduler keeps steps within them.
struct LoraCapacity {
  int max_rank = kMaxLoraRank;
  int max_per_step = 0;
};

// InvalidArgument naming the file and what is wrong: a missing or malformed
// file, a config peft would not serve as plain LoRA (DoRA, fan_in_fan_out,
// biases, per-layer rank or alpha patterns, modules_to_save), a rank outside
// [1, kMaxLoraRank], a target outside q/k/v/o/gate/up/down_proj, a tensor whose
// shape does not fit `config`, or a tensor of a module the config does not
// target. BF16, F16 and F32 tensors are read into f32.
absl::StatusOr<std::shared_ptr<LoraAdapter>> LoadLoraAdapter(
    const std::string& dir, const ModelConfig& config,
    const TensorParallel& tp);

}  // namespace gemma
