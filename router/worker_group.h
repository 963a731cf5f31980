// One worker group as the router drives it: its connection, its scheduler, and the thread that runs its steps.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "gemma/worker/v1/worker.grpc.pb.h"
#include "router/active_request.h"
#include "router/router_metrics.h"
#include "router/scheduler.h"

namespace gemma {

// Thread-safe: Submit and load() from any thread; steps run on the group's own thread.
class WorkerGroup {
 public:
  // Connects and reads the group's model info (Unavailable if it does not answer in time). With
  // `wait_for_ready` it waits out the timeout for a group that is still starting; without, an address nobody
  // listens on fails at once. `metrics` may be null.
  static absl::StatusOr<std::unique_ptr<WorkerGroup>> Connect(const std::string& address, SchedulerLimits limits,
                                                             std::chrono::milliseconds timeout,
                                                             RouterMetrics* metrics = nullptr,
                                                             bool wait_for_ready = true);
  ~WorkerGroup();

  const worker::v1::ModelInfo& info() const { return info_; }
  const std::string& address() const { return address_; }
  bool healthy() const { return healthy_; }
  // Outstanding work, for picking the least-loaded group.
  int load() const { return load_; }
  // ResourceExhausted (queue full) or Unavailable (group down, or draining) when not accepted.
  absl::Status Submit(std::shared_ptr<ActiveRequest> request);
  // Where requests go when this group fails before they started (another group, through the GroupSet); what
  // it returns is the request's failure when not OK. Unset: they fail with Unavailable.
  using Reroute = std::function<absl::Status(std::shared_ptr<ActiveRequest>)>;
  void SetReroute(Reroute reroute);
  // For shutdown: takes no new requests and answers those not yet scheduled Unavailable; running ones go on.
  void Drain();

 private:
  WorkerGroup(std::string address, std::shared_ptr<grpc::Channel> channel, worker::v1::ModelInfo info,
              SchedulerLimits limits, RouterMetrics* metrics);
  void PublishState();
  // While down: back in service when the group's health says SERVING and it answers its model info with the
  // same model. Probes back off exponentially (capped) while it stays down.
  void ProbeRecovery();
  // While up and idle, now and then: a group that stopped serving (a rank died, rank 0 exited) is marked down
  // before a request finds out.
  void CheckIdleHealth();
  bool Serving(std::chrono::milliseconds timeout);
  void Loop();
  bool RunOneStep();
  // The group failed: requests that have not produced anything move to another group, the others fail.
  void MoveOrFailAll();
  void MoveOrFail(std::vector<std::shared_ptr<ActiveRequest>> requests);
  void FailUnscheduled(const absl::Status& status);
  void FailAll(const absl::Status& status);
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
  std::atomic<bool> draining_{false};

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<ActiveRequest>> incoming_ ABSL_GUARDED_BY(mu_);
  Reroute reroute_ ABSL_GUARDED_BY(mu_);
  int max_outstanding_;  // queued + running requests accepted at once
  // The step in flight, cancelled when the group is destroyed so shutdown never waits out a hung worker.
  std::mutex step_mu_;
  grpc::ClientContext* step_ ABSL_GUARDED_BY(step_mu_) = nullptr;

  // Owned by the group's thread.
  SchedulerLimits limits_;
  std::unique_ptr<Scheduler> scheduler_;  // new for each incarnation of the group (its KV pool may differ)
  std::chrono::steady_clock::time_point next_probe_;   // while down
  std::chrono::milliseconds probe_delay_;
  std::chrono::steady_clock::time_point next_health_;  // while up and idle
  std::unordered_map<uint64_t, std::shared_ptr<ActiveRequest>> requests_;
  std::thread thread_;
};

}  // namespace gemma
