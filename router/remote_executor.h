// Runs the engine's steps on a remote worker group over the Worker RPC.
#pragma once

#include <chrono>

#include "engine/step_executor.h"
#include "gemma/worker/v1/worker.grpc.pb.h"

namespace gemma {

// Thread-compatible: one step at a time, from the group's thread.
class RemoteExecutor : public StepExecutor {
 public:
  RemoteExecutor(worker::v1::Worker::Stub* stub, std::chrono::milliseconds step_timeout)
      : stub_(stub), step_timeout_(step_timeout) {}
  // InvalidArgument as the worker gave it (a malformed row, nothing ran); Unavailable when the group did not
  // answer or has failed.
  absl::StatusOr<std::vector<RowResult>> Execute(std::span<const StepRow> rows) override;

 private:
  worker::v1::Worker::Stub* stub_;
  std::chrono::milliseconds step_timeout_;
};

}  // namespace gemma
