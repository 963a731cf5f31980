// Collectives over buffers in host memory (shared memory, Gloo): what CPU ranks and every group's step broadcast use.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"

namespace gemma {

// One rank's handle on its group; every pointer it takes is host memory. Device
// buffers go through a DeviceCollective (device_collective.h), a separate type, so
// a host collective cannot be handed one by mistake. Not thread-safe: every rank
// calls the same sequence of collectives from one thread. A peer that dies, hangs
// or never arrives makes a collective fail with DeadlineExceeded or Unavailable
// within the group's timeout; after a failure the group is unusable.
class HostCollective {
 public:
  virtual ~HostCollective() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  // Bad arguments (a null buffer with a nonzero count, a root outside the group)
  // are InvalidArgument before anything is sent: the group stays usable.
  // data[i] = sum over ranks of data[i], in place.
  virtual absl::Status AllReduceSum(float* data, size_t count) = 0;
  // out[r * count + i] = rank r's in[i]; out holds world() * count floats.
  virtual absl::Status AllGather(const float* in, size_t count, float* out) = 0;
  // Rank `root`'s bytes reach every rank (any length).
  virtual absl::Status Broadcast(std::string* bytes, int root) = 0;
  virtual absl::Status Barrier() = 0;
};

// The name callers used before device collectives had their own interface; it
// keeps the worker and the gemma command building while they move to
// HostCollective.
using Collective = HostCollective;

// InvalidArgument unless `c` is rank `rank` of `world` (weights sliced for one rank, a collective of another).
absl::Status CheckCollectiveRank(const HostCollective& c, int rank, int world);

// The argument checks every host collective makes (InvalidArgument naming the operation): buffers present for
// a nonzero count, a root in [0, world).
absl::Status CheckCollectiveBuffers(const char* what, const void* in, const void* out, size_t count);
absl::Status CheckBroadcastArgs(const HostCollective& c, const std::string* bytes, int root);

// World size 1: every collective is the identity; needs no peer.
std::unique_ptr<HostCollective> MakeSingleRankCollective();

}  // namespace gemma
