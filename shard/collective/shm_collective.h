// Collectives through shared memory, for ranks on one host: no sockets, no thread handoffs.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "shard/collective/collective.h"

namespace gemma {

struct ShmOptions {
  int rank = 0;
  int world = 1;
  // Names the group's segment; every rank passes the same name (e.g. the rendezvous directory's).
  std::string name;
  // A peer that dies or stalls fails the waiting collective within this time.
  std::chrono::milliseconds timeout{30000};
};

// Rank 0 creates the segment, the others attach to it (waiting up to the timeout).
// Each collective sums or copies the ranks' data in rank order, so every rank
// gets bit-identical results. Waiting ranks spin briefly, then yield the CPU,
// so groups larger than the core count still make progress.
absl::StatusOr<std::unique_ptr<HostCollective>> CreateShmCollective(const ShmOptions& options);

}  // namespace gemma
