#include "worker/rank_launcher.h"

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "worker/child_process.h"
#include "worker/pod_metrics.h"
#include "worker/worker_options.h"

namespace gemma {

int RankMetricsPort(const LauncherSettings& settings, int local) {
  return settings.metrics_port > 0 ? settings.metrics_port + 1 + local : 0;
}

absl::Status CheckRankMetricsPorts(const LaunchPlan& plan, const LauncherSettings& settings) {
  if (settings.metrics_port <= 0) return absl::OkStatus();
  const int first = RankMetricsPort(settings, 0), last = RankMetricsPort(settings, plan.ranks_per_host - 1);
  const std::string ranks = absl::StrCat("the ranks serve their metrics to the launcher on ports ", first, "..", last,
                                         " (--metrics_port + 1 + their place in the pod)");
  if (last > 65535) return absl::InvalidArgumentError(absl::StrCat(ranks, ", past 65535; lower --metrics_port"));
  for (auto [p, name] : {std::pair{settings.port, "--port"}, {settings.peer_port, "--peer_port"}}) {
    if (p >= first && p <= last) {
      return absl::InvalidArgumentError(absl::StrCat(ranks, ", which takes ", name, " ", p, "; move one of them"));
    }
  }
  return absl::OkStatus();
}

std::vector<std::string> RankFlags(const LaunchPlan& plan, const LauncherSettings& settings, int local) {
  const int rank = plan.first_rank() + local;
  int threads = settings.threads;
  if (threads == 0) threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / plan.ranks_per_host);
  return {
      "--tp=0",  // a rank, not another launcher
      "--ranks_per_host=0",
      absl::StrCat("--rank=", rank),
      absl::StrCat("--world_size=", plan.tp),
      "--leader=" + plan.leader,
      // Each pod holds its own GPUs, so a rank's device is its place in this pod.
      absl::StrCat("--cuda_device=", local),
      // Probes of the pod reach its first rank; other ranks serve no port.
      absl::StrCat("--port=", local == 0 ? settings.port : 0),
      absl::StrCat("--metrics_port=", RankMetricsPort(settings, local)),
      absl::StrCat("--threads=", threads),
  };
}

int RunLauncher(const LaunchPlan& plan, const LauncherSettings& settings, const std::atomic<bool>& stop) {
  std::unique_ptr<PodMetrics> metrics;
  if (settings.metrics_port > 0) {
    std::vector<int> rank_ports;
    for (int local = 0; local < plan.ranks_per_host; ++local) rank_ports.push_back(RankMetricsPort(settings, local));
    // A rank that hangs must not hold up the scrape past Prometheus's own timeout (10 s by default).
    auto m = PodMetrics::Serve(ListenAddress(settings.listen_host, settings.metrics_port), plan.first_rank(),
                               rank_ports, std::chrono::seconds(1));
    if (!m.ok()) {
      std::fprintf(stderr, "gemma-worker: %s\n", std::string(m.status().message()).c_str());
      return 1;
    }
    metrics = std::move(*m);
  }
  std::vector<pid_t> pids(plan.ranks_per_host, -1);
  auto rank_of = [&](pid_t pid) {
    return plan.first_rank() + static_cast<int>(std::find(pids.begin(), pids.end(), pid) - pids.begin());
  };
  auto running = [&] {
    std::vector<pid_t> r;
    for (pid_t p : pids) {
      if (p > 0) r.push_back(p);
    }
    return r;
  };
  for (int local = 0; local < plan.ranks_per_host; ++local) {
    std::vector<std::string> args = settings.args;
    for (auto& f : RankFlags(plan, settings, local)) args.push_back(std::move(f));
    auto pid = SpawnChild(settings.binary, args, {.die_with_parent = true});
    if (!pid.ok()) {
      std::fprintf(stderr, "gemma-worker: %s\n", std::string(pid.status().message()).c_str());
      StopChildren(running(), std::chrono::seconds(5));
      return 1;
    }
    pids[local] = *pid;
  }
  std::fprintf(stderr, "gemma-worker: started ranks %d..%d of a group of %d (leader %s)\n", plan.first_rank(),
               plan.first_rank() + plan.ranks_per_host - 1, plan.tp, plan.leader.c_str());

  bool stopping = false;
  std::chrono::steady_clock::time_point kill_at;
  std::string failures;
  while (!running().empty()) {
    if (stop && !stopping) {
      stopping = true;
      std::fprintf(stderr, "gemma-worker: stopping; rank 0 drains for up to %lld ms\n",
                   static_cast<long long>(settings.drain_timeout.count()));
      for (pid_t p : running()) ::kill(p, SIGTERM);
      kill_at = std::chrono::steady_clock::now() + settings.drain_timeout + std::chrono::seconds(10);
    }
    if (stopping && std::chrono::steady_clock::now() > kill_at) {
      std::fprintf(stderr, "gemma-worker: ranks still running after the drain timeout; killing them\n");
      for (pid_t p : running()) {
        ::kill(p, SIGKILL);
        ::waitpid(p, nullptr, 0);
      }
      return 1;
    }
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0 || std::find(pids.begin(), pids.end(), pid) == pids.end()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    const int rank = rank_of(pid);
    *std::find(pids.begin(), pids.end(), pid) = -1;
    if (!stopping) {
      std::fprintf(stderr,
                   "gemma-worker: rank %d exited (%s); stopping the other ranks so the group restarts as a whole\n",
                   rank, DescribeExit(status).c_str());
      StopChildren(running(), std::chrono::seconds(5));
      return 1;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      absl::StrAppend(&failures, failures.empty() ? "" : ", ", "rank ", rank, " (", DescribeExit(status), ")");
    }
  }
  if (!failures.empty()) {
    std::fprintf(stderr, "gemma-worker: stopped; %s did not exit cleanly\n", failures.c_str());
    return 1;
  }
  std::fprintf(stderr, "gemma-worker: stopped; every rank exited cleanly\n");
  return 0;
}

}  // namespace gemma
