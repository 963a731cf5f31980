// How much of a GPU the KV cache gets, decided once at start: after the weights are on the device and one step of
// the largest allowed size has run (so every buffer a step uses, the kernels' code and the libraries' state are
// there), the process may use `fraction` of the device's memory in all, and the cache takes what is left of that
// (vLLM's gpu_memory_utilization). Plain C++: the device is read through DeviceMemory, which tests fake.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace gemma::cuda {

struct DeviceMemoryReading {
  int64_t free_bytes = 0;
  int64_t total_bytes = 0;
};

class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;
  virtual absl::StatusOr<DeviceMemoryReading> Read() = 0;
};

struct KvPlanRequest {
  double fraction = 0;       // > 0: plan from the device; 0: fixed_blocks
  int64_t fixed_blocks = 0;  // the size asked for outright (fraction 0)
  int64_t block_bytes = 0;   // one block, every layer
  int64_t min_blocks = 1;    // what one sequence of the longest context needs (planned mode)
  // Kept free beyond the cache: graphs captured later for each decode batch size.
  int64_t reserve_bytes = 0;
  std::string limits;  // the step limits, for messages ("2048 tokens, 256 sequences, 8192 positions")
};

struct KvPlan {
  int64_t blocks = 0;
  int64_t used_bytes = 0;    // by the process (and anyone else) before the cache: weights, step buffers, runtime
  int64_t budget_bytes = 0;  // fraction x total (planned mode)
  int64_t total_bytes = 0;
};

// ResourceExhausted saying what was needed, what there is and which flags change it, when the cache cannot hold
// min_blocks (planned) or the fixed size does not fit what is free; InvalidArgument for a fraction outside (0, 1].
absl::StatusOr<KvPlan> PlanKvCache(DeviceMemory& memory, const KvPlanRequest& request);

// "12.3 GiB" / "512 MiB".
std::string HumanBytes(int64_t bytes);

}  // namespace gemma::cuda
