// Worker groups found through one DNS name that resolves to many addresses (a Kubernetes headless service
// over the groups' leaders): groups that appear join the router, groups that disappear drain and leave.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <set>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "router/group_set.h"

namespace gemma {

struct HostPort {
  std::string host;  // without brackets for IPv6
  int port = 0;
};
// "HOST:PORT" (HOST may be a bracketed IPv6 address) split, without any lookup; InvalidArgument when malformed.
absl::StatusOr<HostPort> ParseHostPort(const std::string& host_port);

// "HOST:PORT" → every address HOST resolves to, as "IP:PORT" or "[IPv6]:PORT". InvalidArgument for a malformed
// spec, Unavailable when the name does not resolve.
absl::StatusOr<std::set<std::string>> ResolveAll(const std::string& host_port);

class GroupDiscovery {
 public:
  using Resolver = std::function<absl::StatusOr<std::set<std::string>>()>;
  using Connector = std::function<absl::StatusOr<std::unique_ptr<WorkerGroup>>(const std::string& address)>;

  GroupDiscovery(Resolver resolve, Connector connect, GroupSet* groups, std::chrono::milliseconds period);
  ~GroupDiscovery() ABSL_LOCKS_EXCLUDED(mu_);

  // One round: connects the addresses that are new, retires the ones gone. When the name does not resolve the
  // groups stay as they are (a DNS hiccup must not empty the router).
  void RefreshOnce();
  // Refreshes every `period` on a thread of its own until destroyed.
  void Start() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  Resolver resolve_;
  Connector connect_;
  GroupSet* groups_;
  std::chrono::milliseconds period_;
  std::set<std::string> failing_;  // addresses whose last connection failed, to say so once
  std::string resolve_error_;      // the last lookup failure, to say it once
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;  // the refresh thread waits on it between rounds
  std::thread thread_;
};

}  // namespace gemma
