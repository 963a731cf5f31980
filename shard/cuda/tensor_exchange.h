// How a CUDA rank sums and gathers its device tensors with its peers: NCCL directly, or a host collective through
// explicit copies to pinned host memory and back.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>

#include "absl/status/statusor.h"
#include "shard/cuda/cuda_backend.h"

namespace gemma::cuda {

// Not thread-safe: used from the backend's step thread. Each call first waits for `stream` (the kernels that wrote
// the input), and leaves the result in device memory ordered before the stream's later work.
class TensorExchange {
 public:
  virtual ~TensorExchange() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  // data[i] = sum over ranks of data[i]; `data` is device memory.
  virtual absl::Status AllReduceSum(float* device_data, size_t count, cudaStream_t stream) = 0;
  // The same sum, only enqueued on `stream` (nothing waits for the device), so that a CUDA graph can capture it
  // with the step's kernels; the caller then waits with Wait. Unimplemented where the exchange cannot.
  virtual absl::Status EnqueueAllReduceSum(float* device_data, size_t count, cudaStream_t stream) = 0;
  // Waits for the stream's work, enqueued sums included; fails as the collective does when a peer dies or hangs.
  virtual absl::Status Wait(cudaStream_t stream) = 0;
  // Makes the calls of up to `floats` floats allocate nothing later (nor inside a graph capture).
  virtual absl::Status Reserve(size_t floats) { return absl::OkStatus(); }
  // out[r * count + i] = rank r's in[i]; both device memory, out holds world() * count floats.
  virtual absl::Status AllGather(const float* device_in, size_t count, float* device_out, cudaStream_t stream) = 0;
};

// The exchange for `collective` on device `device`: a group of one when it is empty (or holds a null pointer).
absl::StatusOr<std::unique_ptr<TensorExchange>> MakeTensorExchange(const CudaCollective& collective, int device);

}  // namespace gemma::cuda
