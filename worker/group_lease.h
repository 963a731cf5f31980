// The lease that lets exactly one router schedule a worker group at a time, with a fencing epoch.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "gemma/worker/v1/worker.pb.h"

namespace gemma {

// Thread-safe, and never waits for a step: a router renews its lease while its steps run.
//
// Two routers handing out blocks of one KV pool would overwrite each other's sequences, so each group has one
// holder. A lease lapses `ttl` after its holder's last renewal or step; another router may then take it, and the
// epoch moves on. Every step names its epoch, and a step of any epoch but the current holder's is refused before
// it runs: a router that stalled past its ttl (a pause, a partition) cannot write blocks the new holder handed out.
class GroupLease {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;
  // Epochs count up from `first_epoch`. By default the wall clock in microseconds: a restarted worker never hands
  // out an epoch its last incarnation gave, so a router that held it before cannot pass the fence by chance.
  explicit GroupLease(Clock now = [] { return std::chrono::steady_clock::now(); }, uint64_t first_epoch = WallEpoch());
  static uint64_t WallEpoch();

  // Grants (or renews) the lease to request.router_id when it holds it or nobody does; otherwise answers who
  // does. InvalidArgument for a malformed request; FailedPrecondition when the router speaks another protocol.
  absl::StatusOr<worker::v1::LeaseState> Acquire(const worker::v1::LeaseRequest& request) ABSL_LOCKS_EXCLUDED(mu_);
  // Frees the lease when request.router_id holds it; the epoch stays until the next holder moves it on.
  worker::v1::LeaseState Release(const worker::v1::LeaseRequest& request) ABSL_LOCKS_EXCLUDED(mu_);
  worker::v1::LeaseState Get() const ABSL_LOCKS_EXCLUDED(mu_);
  // OK when `epoch` is the current holder's; Aborted otherwise, saying who holds the group now. While a step that
  // passed runs, the lease cannot lapse (a step may outlast the ttl: a long prefill on a CPU); StepDone renews it.
  absl::Status CheckStep(uint64_t epoch) ABSL_LOCKS_EXCLUDED(mu_);
  void StepDone(uint64_t epoch) ABSL_LOCKS_EXCLUDED(mu_);
  // CheckStep's answer, without starting a step.
  absl::Status CheckEpoch(uint64_t epoch) const ABSL_LOCKS_EXCLUDED(mu_);
  // A draining group takes no new holder; its holder keeps the lease to finish what runs.
  void SetDraining() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  worker::v1::LeaseState StateLocked(bool granted) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool LapsedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RefusalLocked(uint64_t epoch) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Clock now_;
  mutable absl::Mutex mu_;
  uint64_t epoch_ ABSL_GUARDED_BY(mu_) = 0;
  std::string holder_ ABSL_GUARDED_BY(mu_);  // empty: free
  std::string address_ ABSL_GUARDED_BY(mu_);
  int32_t load_ ABSL_GUARDED_BY(mu_) = 0;
  int32_t capacity_ ABSL_GUARDED_BY(mu_) = 0;
  std::chrono::milliseconds ttl_ ABSL_GUARDED_BY(mu_){0};
  std::chrono::steady_clock::time_point expires_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  int running_steps_ ABSL_GUARDED_BY(mu_) = 0;  // of the current epoch
  std::chrono::steady_clock::time_point wanted_until_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gemma
