// The router-wide budget of activation and logits bytes that Score requests hold at once
// (--max_activation_bytes_in_flight), over the per-request cap (--max_activation_bytes).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace gemma {

// Thread-safe. A request's bytes are reserved before it is handed to a group and released when its lease goes
// (its answer has been sent, or it failed). A request that does not fit is refused at once, not queued: see
// docs/INTERPRETABILITY.md for why.
class ActivationBudget {
 public:
  // The bytes a reservation holds; released when destroyed.
  class Lease {
   public:
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease();
    int64_t bytes() const { return bytes_; }

   private:
    friend class ActivationBudget;
    Lease(ActivationBudget* budget, int64_t bytes) : budget_(budget), bytes_(bytes) {}
    ActivationBudget* budget_;
    const int64_t bytes_;
  };

  // `capacity` >= 0. `on_change`, when set, hears the bytes in flight after each change (a metrics gauge).
  explicit ActivationBudget(int64_t capacity, std::function<void(int64_t)> on_change = nullptr);
  // `bytes` (>= 0) reserved now; ResourceExhausted naming --max_activation_bytes_in_flight, the bytes in flight and
  // the request's when they do not fit beside what is in flight. 0 bytes always fit.
  absl::StatusOr<std::unique_ptr<Lease>> Reserve(int64_t bytes) ABSL_LOCKS_EXCLUDED(mu_);
  int64_t in_flight() const ABSL_LOCKS_EXCLUDED(mu_);
  int64_t capacity() const { return capacity_; }

 private:
  void Release(int64_t bytes) ABSL_LOCKS_EXCLUDED(mu_);

  const int64_t capacity_;
  const std::function<void(int64_t)> on_change_;
  mutable absl::Mutex mu_;
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
};

// The flag's value checked against the per-request cap; 0 takes the default, kDefaultInFlightRequests times it.
inline constexpr int64_t kDefaultInFlightRequests = 4;
absl::StatusOr<int64_t> ResolveActivationBytesInFlight(int64_t flag, int64_t max_activation_bytes);

}  // namespace gemma
