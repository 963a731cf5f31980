// Runs the engine's steps on a remote worker group over the Worker RPC.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "engine/step_executor.h"
#include "gemma/worker/v1/worker.grpc.pb.h"

namespace gemma {

// One step at a time, from the group's thread; Cancel from any thread.
class RemoteExecutor : public StepExecutor {
 public:
  RemoteExecutor(worker::v1::Worker::Stub* stub, std::chrono::milliseconds step_timeout)
      : stub_(stub), step_timeout_(step_timeout) {}
  // InvalidArgument as the worker gave it (a malformed row, nothing ran); Unavailable when the group did not
  // answer or has failed.
  absl::StatusOr<std::vector<RowResult>> Execute(std::span<const StepRow> rows) override;
  // Sent with the next step (StepRequest.released_sequences).
  void Release(std::span<const uint64_t> ids) override;
  // From any thread: cancels the step in flight and refuses later ones (Unavailable), so shutdown never waits
  // out a hung worker.
  void Cancel();

 private:
  worker::v1::Worker::Stub* stub_;
  std::chrono::milliseconds step_timeout_;
  std::mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* in_flight_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::vector<uint64_t> released_;  // the group's thread only
};

}  // namespace gemma
