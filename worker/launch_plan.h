// Which ranks of a tensor-parallel group this pod starts (gemma-worker --tp), from flags and the environment that
// a plain Deployment or a LeaderWorkerSet gives a pod.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace gemma {

struct LaunchPlan {
  int tp = 1;              // ranks in the group
  int ranks_per_host = 1;  // ranks this pod starts: host_index*ranks_per_host .. +ranks_per_host-1
  int host_index = 0;
  std::string leader;      // host:port of rank 0's rendezvous service
  int hosts() const { return tp / ranks_per_host; }
  int first_rank() const { return host_index * ranks_per_host; }
};

// `tp_flag` -1: not given (then LWS_GROUP_SIZE decides), 0: this process is one rank (no launcher). With the
// launcher: tp = --tp, or LWS_GROUP_SIZE * ranks_per_host; ranks_per_host = --ranks_per_host, or tp / LWS_GROUP_SIZE
// (tp without it: the whole group on this host); host_index = GEMMA_HOST_INDEX, else LWS_WORKER_INDEX, else 0; the
// leader = --leader, else GEMMA_LEADER (host[:port]), else LWS_LEADER_ADDRESS (host) at `peer_port`, and
// 127.0.0.1:peer_port for a group on one host. nullopt: no launcher. InvalidArgument names what is wrong and what
// is allowed. `env` reads an environment variable ("" when unset).
absl::StatusOr<std::optional<LaunchPlan>> MakeLaunchPlan(int tp_flag, int ranks_per_host_flag,
                                                         const std::string& leader_flag, int peer_port,
                                                         const std::function<std::string(const char*)>& env);

// The same from the --tp, --ranks_per_host, --leader and --peer_port flags and this process's environment.
absl::StatusOr<std::optional<LaunchPlan>> LaunchPlanFromFlags();

}  // namespace gemma
