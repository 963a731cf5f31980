// The Worker gRPC service of rank 0: model info, and steps run on the whole group one at a time.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "gemma/worker/v1/worker.grpc.pb.h"
#include "shard/runtime/tp_group.h"
#include "worker/group_lease.h"
#include "worker/step_runner.h"
#include "worker/worker_metrics.h"

namespace gemma {

// Thread-safe: steps are serialized (the group runs one at a time).
class WorkerService final : public worker::v1::Worker::Service {
 public:
  // Steps are kept within the limits `info` reports (max_tokens_per_step, max_batch_size, max_model_len): what
  // routers are told is what is enforced.
  // `adapters` holds rank 0's LoRA adapters (followers read theirs when a step first names one). ModelInfo's
  // max_lora_rank and max_loras_per_step are the backend's lora_capacity(), and LoadAdapter refuses (before the
  // adapter is registered, so no rank ever reads it) an adapter it cannot hold.
  WorkerService(std::unique_ptr<LeaderBackend> backend, worker::v1::ModelInfo info, WorkerMetrics* metrics,
                std::shared_ptr<AdapterStore> adapters);
  // Called once, on the thread that finds the group failed (to turn health NOT_SERVING at once).
  void OnFailure(std::function<void()> callback) ABSL_LOCKS_EXCLUDED(mu_);

  grpc::Status GetModelInfo(grpc::ServerContext* context, const worker::v1::GetModelInfoRequest* request,
                            worker::v1::ModelInfo* response) override;
  grpc::Status Step(grpc::ServerContext* context, const worker::v1::StepRequest* request,
                    worker::v1::StepResponse* response) override ABSL_LOCKS_EXCLUDED(mu_);
  grpc::Status AcquireLease(grpc::ServerContext* context, const worker::v1::LeaseRequest* request,
                            worker::v1::LeaseState* response) override;
  grpc::Status ReleaseLease(grpc::ServerContext* context, const worker::v1::LeaseRequest* request,
                            worker::v1::LeaseState* response) override;
  grpc::Status GetLease(grpc::ServerContext* context, const worker::v1::GetLeaseRequest* request,
                        worker::v1::LeaseState* response) override;
  grpc::Status LoadAdapter(grpc::ServerContext* context, const worker::v1::LoadAdapterRequest* request,
                           worker::v1::AdapterInfo* response) override;
  grpc::Status UnloadAdapter(grpc::ServerContext* context, const worker::v1::UnloadAdapterRequest* request,
                             worker::v1::UnloadAdapterResponse* response) override;
  // Sends a heartbeat to idle followers; false once the group has failed.
  bool Heartbeat() ABSL_LOCKS_EXCLUDED(mu_);
  bool healthy() const { return healthy_; }
  // Tells followers to stop (on shutdown).
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);
  // Shutting down (SIGTERM): steps still run, and every answer says draining so routers send nothing new.
  void StartDraining();
  bool draining() const { return draining_; }
  // No step is running and none has started for `quiet`: a draining worker may go.
  bool Quiet(std::chrono::milliseconds quiet) const;

 private:
  void MarkFailed() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  worker::v1::ModelInfo info_;
  const LoraCapacity lora_capacity_;  // the backend's, read once (backend_ is under mu_ while a step runs)
  const std::shared_ptr<AdapterStore> adapters_;  // thread-safe itself
  const StepLimits limits_;
  WorkerMetrics* metrics_;
  GroupLease lease_;  // its own lock: leases are renewed while a step holds mu_
  // Atomic, not under mu_: GetModelInfo answers while a step holds the lock.
  std::atomic<bool> healthy_{true};
  std::atomic<bool> draining_{false};
  // For Quiet(), read without waiting for a running step's lock.
  std::atomic<int> steps_in_flight_{0};
  std::atomic<int64_t> last_step_ns_{0};  // steady clock, when the last step arrived or ended
  // A step waiting for the one it follows (Step) waits on mu_ for a condition that steps and failures change
  // under mu_; releasing mu_ re-evaluates it.
  mutable absl::Mutex mu_;
  std::function<void()> on_failure_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<LeaderBackend> backend_ ABSL_GUARDED_BY(mu_);
  // Per router: its steps run in its order, the next may take what the last one drew (overlapped scheduling),
  // and its penalized sequences' histories.
  // Kept for the 16 most recent routers: a step that follows one this worker no longer holds is refused
  // (FAILED_PRECONDITION) and the router runs it again on its own.
  struct Session {
    uint64_t last_step = 0;
    LastDraws draws;
    SequenceHistory history;  // penalized sequences' tokens (sampling happens here); ids are the router's
    uint64_t used = 0;  // when it last ran a step, for eviction
  };
  Session& SessionFor(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::flat_hash_map<uint64_t, Session> sessions_ ABSL_GUARDED_BY(mu_);
  uint64_t steps_run_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace gemma
