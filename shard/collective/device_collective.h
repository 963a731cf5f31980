// Collectives over buffers in GPU memory (NCCL): what CUDA ranks use for their tensors.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/status.h"

namespace gemma {

// `count` floats at `data` in the memory of the collective's device. A type of
// its own, built explicitly, so that neither a host pointer reaches a device
// collective nor a device pointer a host one without someone writing it down.
struct DeviceFloats {
  explicit DeviceFloats(float* device_data, size_t n) : data(device_data), count(n) {}
  float* data;
  size_t count;
};
struct ConstDeviceFloats {
  explicit ConstDeviceFloats(const float* device_data, size_t n) : data(device_data), count(n) {}
  ConstDeviceFloats(DeviceFloats d) : data(d.data), count(d.count) {}  // NOLINT: read-only view of the same memory
  const float* data;
  size_t count;
};

// One rank's handle on its group, for tensors in device memory. Each call
// returns when the operation has completed on the device, so the caller must
// have finished writing the input (synchronized its stream) first. Not
// thread-safe; the same failure rules as HostCollective (collective.h): a dead
// or hung peer fails the call with DeadlineExceeded or Unavailable within the
// group's timeout. CUDA or NCCL errors are Internal.
class DeviceCollective {
 public:
  virtual ~DeviceCollective() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  // data[i] = sum over ranks of data[i], in place.
  virtual absl::Status AllReduceSum(DeviceFloats data) = 0;
  // out[r * in.count + i] = rank r's in[i]; InvalidArgument unless out.count == world() * in.count.
  virtual absl::Status AllGather(ConstDeviceFloats in, DeviceFloats out) = 0;
  // Rank `root`'s bytes (host memory, any length) reach every rank, staged through the device.
  virtual absl::Status Broadcast(std::string* bytes, int root) = 0;
  virtual absl::Status Barrier() = 0;

  // The all-reduce enqueued on the caller's CUDA stream (a cudaStream_t, here untyped so that this header needs no
  // CUDA) and not waited for, so that a CUDA graph can capture it with the kernels around it. The caller then waits
  // through WaitStream, which fails like the calls above when a peer dies or hangs. Unimplemented where the
  // collective cannot do this.
  virtual absl::Status EnqueueAllReduceSum(DeviceFloats data, void* cuda_stream) {
    return absl::UnimplementedError("this device collective cannot enqueue on a caller's stream");
  }
  virtual absl::Status WaitStream(void* cuda_stream) {
    return absl::UnimplementedError("this device collective cannot enqueue on a caller's stream");
  }
};

// InvalidArgument unless `c` is rank `rank` of `world`.
absl::Status CheckCollectiveRank(const DeviceCollective& c, int rank, int world);

}  // namespace gemma
