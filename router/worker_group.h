// One worker group as the router drives it: its connection, its engine, and the thread that runs its steps.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "gemma/worker/v1/worker.grpc.pb.h"
#include "router/active_request.h"
#include "router/router_metrics.h"
#include "engine/engine.h"
#include "router/remote_executor.h"

namespace gemma {

// The router's scheduling limits kept within the largest step the group's worker takes (a larger one it refuses),
// and to the distinct LoRA adapters its steps may hold (ModelInfo.max_loras_per_step).
SchedulerLimits ClampToWorker(SchedulerLimits limits, const worker::v1::ModelInfo& info);

// A fresh name for this router process: its host, its pid and a random part.
std::string NewRouterId();

// This router's claim on the groups it schedules (see the Worker service's AcquireLease).
struct LeaseOptions {
  std::string router_id = NewRouterId();  // unique per router process
  std::string advertise;    // where other routers reach this one's peer port; empty: they cannot forward here
  std::chrono::milliseconds ttl{5000};
  // How many groups this router holds, shared by all its groups: a router that holds some already waits a little
  // before taking a free one, so groups spread over the routers.
  std::shared_ptr<std::atomic<int>> held = std::make_shared<std::atomic<int>>(0);
};

// How a router drives each group.
struct GroupOptions {
  SchedulerLimits limits;
  bool prefix_cache = true;   // reuse cached prompt prefixes
  bool overlap_steps = true;  // while decoding, send step N+1 before step N has answered
  LeaseOptions lease;
};

// A group another router schedules, as its lease says: where to forward requests for it.
struct PeerHolder {
  std::string address;  // the holder's peer port
  int load = 0;
  int capacity = 0;
};

// Thread-safe: Submit and load() from any thread; steps run on the group's own thread.
class WorkerGroup {
 public:
  // Connects, reads the group's model info (Unavailable if it does not answer in time; FailedPrecondition when it
  // speaks another protocol version) and tries once to take its lease. With
  // `wait_for_ready` it waits out the timeout for a group that is still starting; without, an address nobody
  // listens on fails at once. `metrics` may be null.
  static absl::StatusOr<std::unique_ptr<WorkerGroup>> Connect(const std::string& address, GroupOptions options,
                                                             std::chrono::milliseconds timeout,
                                                             RouterMetrics* metrics = nullptr,
                                                             bool wait_for_ready = true);
  ~WorkerGroup();

  const worker::v1::ModelInfo& info() const { return info_; }
  const std::string& address() const { return address_; }
  bool healthy() const { return healthy_; }
  // Whether this router holds the group's lease (schedules it), and the group takes new requests.
  bool owned() const { return owned_; }
  bool accepting() const { return healthy_ && owned_ && !group_draining_ && !draining_; }
  // The router that schedules the group when another one does and can be forwarded to.
  std::optional<PeerHolder> peer() const ABSL_LOCKS_EXCLUDED(peer_mu_);
  // Outstanding work, for picking the least-loaded group.
  int load() const { return load_; }
  int capacity() const { return max_outstanding_; }
  // How many of a prompt's leading full blocks (named by BlockManager::PrefixHashes for `block_size`) the group's
  // prefix cache holds, as of its last step.
  int CachedPrefixBlocks(const std::vector<uint64_t>& prefix_hashes, int block_size) const
      ABSL_LOCKS_EXCLUDED(names_mu_);
  int block_size() const { return block_size_; }
  // ResourceExhausted (queue full) or Unavailable (group down, or draining) when not accepted.
  // LoRA adapters on this group's worker, by name (their ids are the worker's). Load and Unload call the worker.
  absl::StatusOr<worker::v1::AdapterInfo> LoadAdapter(const std::string& name, const std::string& path)
      ABSL_LOCKS_EXCLUDED(adapters_mu_);
  absl::Status UnloadAdapter(const std::string& name) ABSL_LOCKS_EXCLUDED(adapters_mu_);
  std::vector<worker::v1::AdapterInfo> adapters() const ABSL_LOCKS_EXCLUDED(adapters_mu_);
  bool HasAdapter(const std::string& name) const ABSL_LOCKS_EXCLUDED(adapters_mu_);
  // Where the adapter this group holds under `name` was read from; nullopt when it holds none.
  std::optional<std::string> AdapterPath(const std::string& name) const ABSL_LOCKS_EXCLUDED(adapters_mu_);
  absl::Status Submit(std::shared_ptr<ActiveRequest> request) ABSL_LOCKS_EXCLUDED(mu_);
  // Where requests go when this group fails before they started (another group, through the GroupSet); what
  // it returns is the request's failure when not OK. Unset: they fail with Unavailable.
  using Reroute = std::function<absl::Status(std::shared_ptr<ActiveRequest>)>;
  void SetReroute(Reroute reroute) ABSL_LOCKS_EXCLUDED(mu_);
  // For shutdown: takes no new requests and answers those not yet scheduled Unavailable; running ones go on.
  void Drain();

 private:
  WorkerGroup(std::string address, std::shared_ptr<grpc::Channel> channel, worker::v1::ModelInfo info,
              GroupOptions options, RouterMetrics* metrics);
  std::unique_ptr<Engine> NewEngine(const worker::v1::ModelInfo& info);
  absl::StatusOr<SequenceSpec> SpecFor(const ActiveRequest& r) const ABSL_LOCKS_EXCLUDED(adapters_mu_);
  absl::Status AddToEngine(const ActiveRequest& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Hands a step's outcome for one sequence to its request; true when the request has finished.
  bool Deliver(const SequenceUpdate& u);
  void PublishState() ABSL_LOCKS_EXCLUDED(names_mu_);
  // While down: back in service when the group's health says SERVING and it answers its model info with the
  // same model. Probes back off exponentially (capped) while it stays down.
  void ProbeRecovery();
  // While up and idle, now and then: a group that stopped serving (a rank died, rank 0 exited) is marked down
  // before a request finds out.
  void CheckIdleHealth();
  bool Serving(std::chrono::milliseconds timeout);
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);
  // What the loop waits for while it holds nothing to step.
  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RunOneStep();
  absl::Status GroupFailed() const;
  // Takes or renews the lease when due; notices when another router took it.
  // `info_fresh`: the model info was read a moment ago (by Connect), so a grant needs no RefreshInfo first.
  void MaintainLease(bool info_fresh = false);
  // How long a router holding `held` groups waits before it tries again for one another router holds.
  std::chrono::milliseconds LeaseRetryDelay(int held) const;
  // Another router holds the group now: what ran here fails (its KV blocks are the new holder's), what had not
  // started moves to another group.
  void LoseLease(const std::string& why);
  // On shutdown: another router may take the group at once.
  void ReleaseLease();
  void SendRelease();  // the RPC alone, for a lease just granted and not to be kept
  // Counts one held group down if more than one is held: this one may then be given to a router holding none.
  bool ClaimGiveBack();
  // The group failed or stopped answering: out of service until a probe finds it back.
  void MarkDown();
  // Reads the group's model info again (before taking its lease, and when a failed group answers again) into
  // engine_info_: false (and it is not taken) when the group does not answer or now serves another model or protocol.
  bool RefreshInfo(const char* refusal = "not taking it");  // `refusal` ends the log line of a refused group
  // The group said it is shutting down: requests not yet started move to other groups.
  void MoveUnscheduled();
  std::vector<std::shared_ptr<ActiveRequest>> TakeUnscheduled() ABSL_LOCKS_EXCLUDED(mu_);
  // The group failed: requests that have not produced anything move to another group, the others fail.
  void MoveOrFailAll(const absl::Status& failed) ABSL_LOCKS_EXCLUDED(mu_);
  void MoveOrFail(std::vector<std::shared_ptr<ActiveRequest>> requests, const absl::Status& failed)
      ABSL_LOCKS_EXCLUDED(mu_);
  void FailUnscheduled(const absl::Status& status) ABSL_LOCKS_EXCLUDED(mu_);
  void FailAll(const absl::Status& status) ABSL_LOCKS_EXCLUDED(mu_);
  // Requests left while the scheduler holds none (a bug) would keep the loop stepping empty plans: they fail.
  void FailOrphans();

  const std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<worker::v1::Worker::Stub> stub_;
  const worker::v1::ModelInfo info_;
  RouterMetrics* metrics_;
  int64_t preemptions_seen_ = 0;
  std::atomic<bool> healthy_{true};
  std::atomic<int> load_{0};
  std::atomic<bool> stop_{false};
  std::atomic<bool> draining_{false};        // this router is shutting down
  std::atomic<bool> group_draining_{false};  // the group is
  std::atomic<bool> owned_{false};
  uint64_t epoch_ = 0;  // of the lease held; the group's thread only
  std::chrono::steady_clock::time_point next_lease_;
  std::string lease_error_;  // the last refusal, to say it once
  mutable absl::Mutex peer_mu_;
  worker::v1::LeaseState peer_ ABSL_GUARDED_BY(peer_mu_);  // as last seen while another router held it

  // The group's thread waits on mu_ for HasWork(); releasing mu_ re-evaluates it, so whoever changes what it
  // reads (stop_ included) takes mu_ afterwards.
  absl::Mutex mu_;
  mutable absl::Mutex adapters_mu_;
  std::unordered_map<std::string, worker::v1::AdapterInfo> adapters_ ABSL_GUARDED_BY(adapters_mu_);
  void SetAdapters(const worker::v1::ModelInfo& info) ABSL_LOCKS_EXCLUDED(adapters_mu_);
  std::vector<std::shared_ptr<ActiveRequest>> incoming_ ABSL_GUARDED_BY(mu_);
  Reroute reroute_ ABSL_GUARDED_BY(mu_);
  int max_outstanding_;  // queued + running requests accepted at once

  // A copy of the prefix cache's names, for routing a request to the group that holds its prefix.
  mutable absl::Mutex names_mu_;
  absl::flat_hash_set<uint64_t> cached_names_ ABSL_GUARDED_BY(names_mu_);
  uint64_t names_version_seen_ = ~uint64_t{0};
  std::atomic<int> block_size_{0};

  // Owned by the group's thread.
  const GroupOptions options_;
  RemoteExecutor executor_;
  worker::v1::ModelInfo engine_info_;  // the incarnation engine_ was made for (set by NewEngine: declared first)
  std::string clamp_logged_;  // the clamped limits last logged, so each is said once (set by NewEngine too)
  std::unique_ptr<Engine> engine_;  // new for each incarnation of the group (its KV pool may differ)
  int64_t prefix_queried_seen_ = 0, prefix_hit_seen_ = 0, prefilled_seen_ = 0, window_released_seen_ = 0;
  std::chrono::steady_clock::time_point next_probe_;   // while down
  std::chrono::milliseconds probe_delay_;
  std::chrono::steady_clock::time_point next_health_;  // while up and idle
  std::unordered_map<uint64_t, std::shared_ptr<ActiveRequest>> requests_;
  bool drain_handled_ = false;
  std::thread thread_;
};

}  // namespace gemma
