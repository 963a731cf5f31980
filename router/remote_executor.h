// Runs the engine's steps on a remote worker group over the Worker RPC.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <future>
#include <set>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "engine/step_executor.h"
#include "gemma/worker/v1/worker.grpc.pb.h"

namespace gemma {

// One step at a time, from the group's thread; Cancel from any thread.
class RemoteExecutor : public StepExecutor {
 public:
  RemoteExecutor(worker::v1::Worker::Stub* stub, std::chrono::milliseconds step_timeout);
  // InvalidArgument as the worker gave it (a malformed row, nothing ran); Aborted when the step's lease epoch is
  // no longer the group's (another router holds it); Unavailable when the group did not answer or has failed.
  absl::StatusOr<std::vector<RowResult>> Execute(std::span<const StepRow> rows) override;
  bool CanStart() const override { return true; }
  std::future<absl::StatusOr<std::vector<RowResult>>> Start(std::span<const StepRow> rows,
                                                             bool after_previous) override;
  // Sent with the next step (StepRequest.released_sequences).
  void Release(std::span<const uint64_t> ids) override ABSL_LOCKS_EXCLUDED(mu_);
  // From any thread: cancels the step in flight and refuses later ones (Unavailable), so shutdown never waits
  // out a hung worker.
  void Cancel() ABSL_LOCKS_EXCLUDED(mu_);
  // The lease epoch every later step carries.
  void set_epoch(uint64_t epoch) { epoch_ = epoch; }
  // Whether the group said, in its last answer, that it is shutting down.
  bool group_draining() const { return group_draining_; }
  void clear_group_draining() { group_draining_ = false; }

 private:
  worker::v1::Worker::Stub* stub_;
  std::chrono::milliseconds step_timeout_;
  // The wire request, numbered for the worker's ordering of overlapped steps.
  worker::v1::StepRequest Number(std::span<const StepRow> rows, bool after_previous) ABSL_LOCKS_EXCLUDED(mu_);
  struct Pending;
  std::future<absl::StatusOr<std::vector<RowResult>>> Send(worker::v1::StepRequest req) ABSL_LOCKS_EXCLUDED(mu_);
  // The answer as the engine reads it; the releases a failed request carried go with the next one.
  absl::StatusOr<std::vector<RowResult>> Finish(const grpc::Status& status, const worker::v1::StepRequest& req,
                                                const worker::v1::StepResponse& resp);
  // Releases a request carried that did not reach the worker go with the next one.
  void Unsend(const worker::v1::StepRequest& req) ABSL_LOCKS_EXCLUDED(mu_);
  void UnsendLocked(const worker::v1::StepRequest& req) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::set<grpc::ClientContext*> in_flight_ ABSL_GUARDED_BY(mu_);
  uint64_t last_step_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<uint64_t> epoch_{0};
  std::atomic<bool> group_draining_{false};
  const uint64_t session_;  // this executor's numbering of steps, as the worker tells routers apart
  std::vector<uint64_t> released_ ABSL_GUARDED_BY(mu_);  // sent with the next step
};

}  // namespace gemma
