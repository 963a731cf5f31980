// gemma-worker --tp: starts this pod's ranks of a tensor-parallel group as child processes and supervises them, so
// the pod lives and dies as the group does.
#pragma once

#include <atomic>
#include <chrono>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "worker/launch_plan.h"

namespace gemma {

struct LauncherSettings {
  std::string binary;              // the gemma-worker to run for each rank
  std::vector<std::string> args;   // the launcher's own arguments; each rank's flags are appended (the last wins)
  int port = 0;                    // the Worker API port: rank 0's (health only on other hosts' first rank)
  int peer_port = 0;               // rank 0's rendezvous port
  int metrics_port = 0;            // the pod's, served by the launcher for all its ranks; 0: none
  std::string listen_host = "0.0.0.0";  // where the pod's metrics listen
  int threads = 0;                 // compute threads per rank; 0: the host's cores split among this pod's ranks
  std::chrono::milliseconds drain_timeout{30000};
};

// Where rank `local` serves its own metrics for the launcher to read: metrics_port + 1 + local, past the pod's
// declared port (0 without --metrics_port).
int RankMetricsPort(const LauncherSettings& settings, int local);

// InvalidArgument when a rank's metrics port would be the Worker API or rendezvous port, or past 65535.
absl::Status CheckRankMetricsPorts(const LaunchPlan& plan, const LauncherSettings& settings);

// The flags rank `local` (0..ranks_per_host-1) of this pod gets on top of the launcher's own.
std::vector<std::string> RankFlags(const LaunchPlan& plan, const LauncherSettings& settings, int local);

// Serves the pod's metrics (every rank's, merged) on metrics_port, starts the ranks and waits. A rank that exits
// while `stop` is false takes the others down (SIGTERM, then SIGKILL after 5 s), and the launcher returns 1 naming
// it and its exit status. Once `stop` is set, SIGTERM goes to every rank (rank 0 drains, then tells the others to
// stop) and the launcher returns when all have exited: 0 if every rank exited 0; ranks still running after the
// drain timeout and 10 s more are killed.
int RunLauncher(const LaunchPlan& plan, const LauncherSettings& settings, const std::atomic<bool>& stop);

}  // namespace gemma
