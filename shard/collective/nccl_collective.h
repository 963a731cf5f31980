// Collectives over NCCL, for GPU ranks. No CUDA or NCCL types here: only nccl_collective.cc sees them.
#pragma once

#include <chrono>
#include <memory>

#include "absl/status/statusor.h"
#include "shard/collective/collective.h"
#include "shard/collective/device_collective.h"

namespace gemma {

// Whether this build has NCCL (it does wherever the CUDA toolkit and NCCL were found).
bool NcclAvailable();

// Joins a NCCL communicator on CUDA device `device`. The unique id travels from
// rank 0 over `bootstrap` (Gloo, shared memory; world 1 needs none), whose
// rank and world this collective takes. Every operation waits for completion;
// a peer that dies or hangs aborts the communicator and fails the call with
// DeadlineExceeded/Unavailable within `timeout`. CUDA or NCCL errors are
// Internal with file and line.
absl::StatusOr<std::unique_ptr<DeviceCollective>> CreateNcclCollective(HostCollective& bootstrap, int device,
                                                                       std::chrono::milliseconds timeout);

}  // namespace gemma
