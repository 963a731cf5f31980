// libFuzzer target: config.json parsing, quantization_config included, must reject any input with a status, never
// crash, throw or read out of bounds.
#include <cstddef>
#include <cstdint>

#include "shard/model/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto config = gemma::ParseModelConfig(absl::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
  using Method = gemma::CheckpointQuantization::Method;
  const bool four_bit = config.ok() && (config->quantization.method == Method::kGptq ||
                                        config->quantization.method == Method::kAwq);
  if (four_bit && config->quantization.group_size != 32 && config->quantization.group_size != 64 &&
      config->quantization.group_size != 128) {
    __builtin_trap();  // the parser promised a group size the 4-bit loader handles
  }
  return 0;
}
