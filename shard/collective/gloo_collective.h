// Collectives over Gloo's TCP transport, for CPU ranks.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "shard/collective/collective.h"

namespace gloo::rendezvous {
class Store;
}

namespace gemma {

struct GlooOptions {
  int rank = 0;
  int world = 1;
  // Address this rank listens on for its peers ("" = all interfaces of the host name).
  std::string bind_host = "127.0.0.1";
  // Bound on rendezvous and on every collective: a dead or hung peer fails the call within it.
  std::chrono::milliseconds timeout{30000};
};

// Rendezvous through `store` (shared by all ranks), then connect a full mesh.
// Unavailable when peers do not arrive within the timeout.
absl::StatusOr<std::unique_ptr<HostCollective>> CreateGlooCollective(std::shared_ptr<gloo::rendezvous::Store> store,
                                                                 const GlooOptions& options);

// A store in a directory every rank can see (local groups, tests).
std::shared_ptr<gloo::rendezvous::Store> MakeFileStore(const std::string& dir);

}  // namespace gemma
