// libFuzzer target: the safetensors header parser must reject any input cleanly, never crash or read out of bounds.
#include <cstddef>
#include <cstdint>

#include "shard/checkpoint/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto header = gemma::ParseSafetensors(absl::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
  if (header.ok()) {
    const uint64_t data_size = size - header->data_offset;
    for (const auto& [name, t] : header->tensors) {
      if (t.end > data_size || t.begin > t.end) __builtin_trap();  // the parser promised bounds
    }
  }
  return 0;
}
