#include "router/activation_budget.h"

#include "absl/strings/str_cat.h"

namespace gemma {

ActivationBudget::Lease::~Lease() { budget_->Release(bytes_); }

ActivationBudget::ActivationBudget(int64_t capacity, std::function<void(int64_t)> on_change)
    : capacity_(capacity), on_change_(std::move(on_change)) {}

absl::StatusOr<std::unique_ptr<ActivationBudget::Lease>> ActivationBudget::Reserve(int64_t bytes) {
  int64_t now;
  {
    absl::MutexLock lock(&mu_);
    if (bytes > 0 && in_flight_ + bytes > capacity_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the router holds ", in_flight_, " bytes of activations and logits for requests in flight; this request's ",
          bytes, " would pass the router-wide cap (--max_activation_bytes_in_flight) of ", capacity_,
          ": retry later, or ask fewer points or positions"));
    }
    in_flight_ += bytes;
    now = in_flight_;
  }
  if (on_change_ && bytes > 0) on_change_(now);
  return std::unique_ptr<Lease>(new Lease(this, bytes));
}

void ActivationBudget::Release(int64_t bytes) {
  if (bytes == 0) return;
  int64_t now;
  {
    absl::MutexLock lock(&mu_);
    in_flight_ -= bytes;
    now = in_flight_;
  }
  if (on_change_) on_change_(now);
}

int64_t ActivationBudget::in_flight() const {
  absl::MutexLock lock(&mu_);
  return in_flight_;
}

absl::StatusOr<int64_t> ResolveActivationBytesInFlight(int64_t flag, int64_t max_activation_bytes) {
  if (flag == 0) return kDefaultInFlightRequests * max_activation_bytes;
  if (flag < max_activation_bytes || flag > (int64_t{1} << 40)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_activation_bytes_in_flight is ", flag, "; allowed: 0 (", kDefaultInFlightRequests,
        " x --max_activation_bytes) or ", max_activation_bytes, " (--max_activation_bytes: a request within the ",
        "per-request cap must be able to run alone) to 1099511627776 (1 TiB)"));
  }
  return flag;
}

}  // namespace gemma
