#include "worker/group_lease.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace gemma {

namespace {
constexpr int32_t kMinTtlMs = 100;
constexpr int32_t kMaxTtlMs = 600000;
constexpr size_t kMaxIdBytes = 256;
}  // namespace

GroupLease::GroupLease(Clock now, uint64_t first_epoch) : now_(std::move(now)), epoch_(first_epoch) {}

uint64_t GroupLease::WallEpoch() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

bool GroupLease::LapsedLocked() const { return holder_.empty() || (running_steps_ == 0 && now_() >= expires_); }

worker::v1::LeaseState GroupLease::StateLocked(bool granted) const {
  worker::v1::LeaseState s;
  s.set_granted(granted);
  s.set_epoch(epoch_);
  s.set_draining(draining_);
  s.set_wanted(now_() < wanted_until_);
  if (LapsedLocked()) return s;
  s.set_holder_id(holder_);
  s.set_holder_address(address_);
  s.set_holder_load(load_);
  s.set_holder_capacity(capacity_);
  s.set_expires_in_ms(static_cast<int32_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(expires_ - now_()).count()));
  return s;
}

absl::StatusOr<worker::v1::LeaseState> GroupLease::Acquire(const worker::v1::LeaseRequest& r) {
  const uint32_t ours = worker::v1::PROTOCOL_VERSION_CURRENT;
  if (r.protocol_version() != ours) {
    return absl::FailedPreconditionError(
        absl::StrCat("the router speaks worker protocol ", r.protocol_version(), " and this worker speaks ", ours,
                     "; run routers and workers of the same release (upgrade one side, see docs/DEPLOY.md)"));
  }
  if (r.router_id().empty() || r.router_id().size() > kMaxIdBytes || r.router_address().size() > kMaxIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("router_id must be 1..", kMaxIdBytes,
                                                   " bytes and router_address at most ", kMaxIdBytes));
  }
  if (r.ttl_ms() < kMinTtlMs || r.ttl_ms() > kMaxTtlMs) {
    return absl::InvalidArgumentError(
        absl::StrCat("ttl_ms ", r.ttl_ms(), " is out of range; allowed: ", kMinTtlMs, "..", kMaxTtlMs));
  }
  if (r.load() < 0 || r.capacity() < 0) return absl::InvalidArgumentError("load and capacity must be >= 0");
  absl::MutexLock lock(&mu_);
  if (holder_ != r.router_id()) {
    // Lapsed but untaken, the holder keeps its epoch: nobody else has written the pool since.
    if (!LapsedLocked() || draining_) {
      if (r.wants_group()) wanted_until_ = now_() + std::chrono::milliseconds(r.ttl_ms());
      return StateLocked(false);
    }
    holder_ = r.router_id();
    ++epoch_;
    running_steps_ = 0;  // steps of the old epoch still finishing no longer hold the lease
    wanted_until_ = {};
  }
  address_ = r.router_address();
  load_ = r.load();
  capacity_ = r.capacity();
  ttl_ = std::chrono::milliseconds(r.ttl_ms());
  expires_ = now_() + ttl_;
  return StateLocked(true);
}

worker::v1::LeaseState GroupLease::Release(const worker::v1::LeaseRequest& r) {
  absl::MutexLock lock(&mu_);
  if (!r.router_id().empty() && holder_ == r.router_id()) holder_.clear();
  return StateLocked(false);
}

worker::v1::LeaseState GroupLease::Get() const {
  absl::MutexLock lock(&mu_);
  return StateLocked(false);
}

absl::Status GroupLease::CheckStep(uint64_t epoch) {
  absl::MutexLock lock(&mu_);
  if (epoch != 0 && epoch == epoch_ && !holder_.empty()) {
    expires_ = std::max(expires_, now_() + ttl_);
    ++running_steps_;
    return absl::OkStatus();
  }
  return RefusalLocked(epoch);
}

absl::Status GroupLease::CheckEpoch(uint64_t epoch) const {
  absl::MutexLock lock(&mu_);
  if (epoch != 0 && epoch == epoch_ && !holder_.empty()) return absl::OkStatus();
  return RefusalLocked(epoch);
}

absl::Status GroupLease::RefusalLocked(uint64_t epoch) const {
  if (epoch == 0) {
    return absl::AbortedError("the step holds no lease epoch; acquire the group's lease (AcquireLease) first");
  }
  return absl::AbortedError(absl::StrCat(
      "the step's lease epoch ", epoch, " is not the group's: ",
      holder_.empty() ? absl::StrCat("nobody holds it (epoch ", epoch_, ")")
                      : absl::StrCat("router ", holder_, " holds it under epoch ", epoch_),
      "; the sending router lost the lease and must not write this group's KV cache"));
}

void GroupLease::StepDone(uint64_t epoch) {
  absl::MutexLock lock(&mu_);
  if (epoch != epoch_ || running_steps_ == 0) return;
  --running_steps_;
  expires_ = std::max(expires_, now_() + ttl_);
}

void GroupLease::SetDraining() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

}  // namespace gemma
