#include "worker/launch_plan.h"

#include <cstdlib>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

ABSL_FLAG(int, tp, -1,
          "start the whole tensor-parallel group of this many ranks on this host (a launcher that supervises them); "
          "0: this process is one rank (--rank, --world_size); default: LWS_GROUP_SIZE * --ranks_per_host when "
          "LWS_GROUP_SIZE is set, else 0");
ABSL_FLAG(int, ranks_per_host, 0,
          "with --tp: ranks this pod starts, for groups over several hosts; 0: --tp / LWS_GROUP_SIZE, or all of them");
ABSL_DECLARE_FLAG(std::string, leader);
ABSL_DECLARE_FLAG(int, peer_port);

namespace gemma {
namespace {

absl::StatusOr<int> EnvInt(const std::function<std::string(const char*)>& env, const char* name, int lo, int hi) {
  const std::string v = env(name);
  int n;
  if (!absl::SimpleAtoi(v, &n) || n < lo || n > hi) {
    return absl::InvalidArgumentError(absl::StrCat(name, "=\"", v, "\" is invalid; allowed: ", lo, "..", hi));
  }
  return n;
}

}  // namespace

absl::StatusOr<std::optional<LaunchPlan>> MakeLaunchPlan(int tp_flag, int ranks_per_host_flag,
                                                         const std::string& leader_flag, int peer_port,
                                                         const std::function<std::string(const char*)>& env) {
  if (tp_flag < -1 || tp_flag > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("--tp ", tp_flag, " is invalid; allowed: 0 (one rank) or 1..1024"));
  }
  if (ranks_per_host_flag < 0 || ranks_per_host_flag > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("--ranks_per_host ", ranks_per_host_flag, " is invalid; allowed: 0 (derived) or 1..1024"));
  }
  int lws_hosts = 0;
  if (!env("LWS_GROUP_SIZE").empty()) {
    auto n = EnvInt(env, "LWS_GROUP_SIZE", 1, 1024);
    if (!n.ok()) return n.status();
    lws_hosts = *n;
  }
  if (tp_flag == 0 || (tp_flag == -1 && lws_hosts == 0)) {
    if (ranks_per_host_flag != 0) {
      return absl::InvalidArgumentError("--ranks_per_host needs --tp N (or LWS_GROUP_SIZE): it splits a group the "
                                        "launcher starts");
    }
    return std::nullopt;
  }
  LaunchPlan p;
  if (tp_flag == -1) {
    p.ranks_per_host = ranks_per_host_flag > 0 ? ranks_per_host_flag : 1;
    p.tp = lws_hosts * p.ranks_per_host;
    if (p.tp > 1024) {
      return absl::InvalidArgumentError(absl::StrCat("LWS_GROUP_SIZE ", lws_hosts, " * --ranks_per_host ",
                                                     p.ranks_per_host, " = ", p.tp, " ranks; allowed: up to 1024"));
    }
  } else {
    p.tp = tp_flag;
    if (ranks_per_host_flag > 0) {
      p.ranks_per_host = ranks_per_host_flag;
    } else if (lws_hosts > 0) {
      if (p.tp % lws_hosts != 0) {
        return absl::InvalidArgumentError(absl::StrCat("--tp ", p.tp, " does not split over LWS_GROUP_SIZE=", lws_hosts,
                                                       " hosts; allowed: a multiple of ", lws_hosts));
      }
      p.ranks_per_host = p.tp / lws_hosts;
    } else {
      p.ranks_per_host = p.tp;
    }
    if (p.ranks_per_host > p.tp || p.tp % p.ranks_per_host != 0) {
      return absl::InvalidArgumentError(absl::StrCat("--ranks_per_host ", p.ranks_per_host, " does not divide --tp ",
                                                     p.tp, "; allowed: a divisor of ", p.tp));
    }
    if (lws_hosts > 0 && p.hosts() != lws_hosts) {
      return absl::InvalidArgumentError(absl::StrCat("--tp ", p.tp, " over --ranks_per_host ", p.ranks_per_host, " is ",
                                                     p.hosts(), " hosts, but LWS_GROUP_SIZE=", lws_hosts,
                                                     "; allowed: --tp = LWS_GROUP_SIZE * --ranks_per_host"));
    }
  }
  bool host_index_set = false;
  for (const char* name : {"GEMMA_HOST_INDEX", "LWS_WORKER_INDEX"}) {
    if (env(name).empty()) continue;
    host_index_set = true;
    auto i = EnvInt(env, name, 0, p.hosts() - 1);
    if (!i.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(i.status().message(), " (a group of ", p.tp, " ranks, ",
                                                     p.ranks_per_host, " per host, spans ", p.hosts(), " hosts)"));
    }
    p.host_index = *i;
    break;
  }
  if (p.hosts() > 1 && !host_index_set) {
    // Defaulting to host 0 would start a second rank 0 on every host, and the group would wait out its whole
    // group wait timeout before anyone saw why.
    return absl::InvalidArgumentError(absl::StrCat("a group over ", p.hosts(),
                                                   " hosts needs this host's index: set GEMMA_HOST_INDEX or "
                                                   "LWS_WORKER_INDEX; allowed: 0 to ",
                                                   p.hosts() - 1));
  }
  if (p.hosts() == 1) {
    // The whole group is on this host: the ranks meet over loopback, whatever address the pod has.
    p.leader = absl::StrCat("127.0.0.1:", peer_port);
    return p;
  }
  std::string leader = leader_flag;
  if (leader.empty()) leader = env("GEMMA_LEADER");
  if (leader.empty()) leader = env("LWS_LEADER_ADDRESS");
  if (leader.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("a group over ", p.hosts(),
                                                   " hosts needs its leader's address: --leader, GEMMA_LEADER "
                                                   "(host[:port]) or LWS_LEADER_ADDRESS (host)"));
  }
  // A bare host (LWS gives one) meets at the rendezvous port; "[v6]:port" and "host:port" keep theirs.
  const size_t colon = leader.rfind(':');
  const bool has_port = colon != std::string::npos && leader.find(']', colon) == std::string::npos &&
                        (leader[0] == '[' || leader.find(':') == colon);
  p.leader = has_port ? leader : absl::StrCat(leader, ":", peer_port);
  return p;
}

absl::StatusOr<std::optional<LaunchPlan>> LaunchPlanFromFlags() {
  return MakeLaunchPlan(absl::GetFlag(FLAGS_tp), absl::GetFlag(FLAGS_ranks_per_host), absl::GetFlag(FLAGS_leader),
                        absl::GetFlag(FLAGS_peer_port), [](const char* name) {
                          const char* v = std::getenv(name);
                          return std::string(v ? v : "");
                        });
}

}  // namespace gemma
