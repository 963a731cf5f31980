// The safetensors format: header parsing (bounds-checked, fuzzed) and writing.
#pragma once

#include "absl/strings/string_view.h"
#include <cstdint>
#include <map>
#include <string>

#include <vector>

#include "absl/status/statusor.h"
#include "shard/model/dtype.h"

namespace gemma {

struct TensorEntry {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
  int64_t NumElements() const;
};

// Value type; thread-compatible.
struct SafetensorsHeader {
  uint64_t data_offset = 0;  // where the data section starts in the file (8 + header length)
  std::map<std::string, TensorEntry> tensors;
  std::map<std::string, std::string> metadata;
};

// Parses and validates the header of a whole safetensors file held in `file`.
// Every tensor's byte range lies inside the file, matches its dtype and shape,
// and overlaps no other. `source` names the file in error messages.
absl::StatusOr<SafetensorsHeader> ParseSafetensors(absl::string_view file, absl::string_view source);

// A tensor to write; `num_bytes` of little-endian `dtype` data follow in the data section.
struct TensorHeader {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t num_bytes;
};

// Serializes the header for `tensors` (data laid out in the given order, header
// padded to 8 bytes as the reference writer does). Returns the 8-byte length
// prefix + header JSON; the caller writes the tensors' bytes after it.
std::string SafetensorsHeaderBytes(const std::vector<TensorHeader>& tensors,
                                   const std::map<std::string, std::string>& metadata);

}  // namespace gemma
