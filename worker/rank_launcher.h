// gemma-worker --tp: starts this pod's ranks of a tensor-parallel group as child processes and supervises them, so
// the pod lives and dies as the group does.
#pragma once

#include <atomic>
#include <chrono>
#include <string>
#include <vector>

#include "worker/launch_plan.h"

namespace gemma {

struct LauncherSettings {
  std::string binary;              // the gemma-worker to run for each rank
  std::vector<std::string> args;   // the launcher's own arguments; each rank's flags are appended (the last wins)
  int port = 0;                    // the Worker API port: rank 0's (health only on other hosts' first rank)
  int metrics_port = 0;            // this pod's first rank's; its i-th rank serves metrics_port + i; 0: none
  int threads = 0;                 // compute threads per rank; 0: the host's cores split among this pod's ranks
  std::chrono::milliseconds drain_timeout{30000};
};

// The flags rank `local` (0..ranks_per_host-1) of this pod gets on top of the launcher's own.
std::vector<std::string> RankFlags(const LaunchPlan& plan, const LauncherSettings& settings, int local);

// Starts the ranks and waits. A rank that exits while `stop` is false takes the others down (SIGTERM, then SIGKILL
// after 5 s), and the launcher returns 1 naming it and its exit status. Once `stop` is set, SIGTERM goes to every
// rank (rank 0 drains, then tells the others to stop) and the launcher returns when all have exited: 0 if every
// rank exited 0; ranks still running after the drain timeout and 10 s more are killed.
int RunLauncher(const LaunchPlan& plan, const LauncherSettings& settings, const std::atomic<bool>& stop);

}  // namespace gemma
