// A Hugging Face Gemma checkpoint directory: config.json + one or more memory-mapped safetensors files.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "shard/checkpoint/mapped_file.h"
#include "shard/model/model_config.h"
#include "shard/checkpoint/safetensors.h"

namespace gemma {

// One tensor as stored: dtype, shape and its bytes inside a mapping.
struct StoredTensor {
  std::string name;
  std::string file;  // for error messages
  DType dtype;
  std::vector<int64_t> shape;
  const char* data;  // into the mapping; valid while the Checkpoint lives
  uint64_t num_bytes;
};

// Immutable after Open; thread-safe for concurrent reads.
class Checkpoint {
 public:
  // Opens `dir`: config.json, and model.safetensors or the files named by
  // model.safetensors.index.json.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const ModelConfig& config() const { return config_; }
  const std::string& dir() const { return dir_; }
  // The tensor, checked against the expected shape and the dtypes allowed (floating point by default).
  absl::StatusOr<StoredTensor> Get(const std::string& name, const std::vector<int64_t>& expected_shape,
                                   std::initializer_list<DType> allowed = {DType::kBF16, DType::kF16,
                                                                           DType::kF32}) const;
  bool Has(const std::string& name) const { return tensors_.count(name) > 0; }
  // The tensor as stored, whatever its dtype and shape.
  absl::StatusOr<StoredTensor> Raw(const std::string& name) const;
  // Every tensor name in the files, in name order.
  std::vector<std::string> TensorNames() const;
  uint64_t TotalBytes() const;

 private:
  struct Located {
    int file_index;
    TensorEntry entry;
  };
  std::string dir_;
  ModelConfig config_;
  std::vector<MappedFile> files_;
  std::vector<SafetensorsHeader> headers_;
  std::map<std::string, Located> tensors_;
};

}  // namespace gemma
