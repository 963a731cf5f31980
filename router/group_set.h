// The worker groups a router serves, which may change while it runs (groups found through DNS come and go).
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "tokenizer/tokenizer.h"
#include "router/structured_output.h"
#include "router/worker_group.h"

namespace gemma {

// What every group of one router must serve: the first group to join fixes it.
struct ServedModel {
  worker::v1::ModelInfo info;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<StructuredOutput> structured_output;  // response formats over this tokenizer
};

// Thread-safe.
class GroupSet {
 public:
  GroupSet() = default;
  // Stops every group (see Stop).
  ~GroupSet();
  // Adds a connected group. The first one fixes the model; a later one serving another model is refused
  // (InvalidArgument), as is a second group at the same address (AlreadyExists). Requests a group could not
  // start because it failed are handed to the other groups.
  absl::Status Add(std::unique_ptr<WorkerGroup> group) ABSL_LOCKS_EXCLUDED(mu_);
  // Names a request uniquely among all that reach these groups (through the public and the peer service alike):
  // a group keys its requests by it.
  uint64_t NewRequestId() { return next_request_id_++; }
  // Null until the first group has joined.
  std::shared_ptr<const ServedModel> model() const ABSL_LOCKS_EXCLUDED(mu_);
  // Hands the request to the least-loaded healthy group this router schedules (among those holding its adapter as
  // last loaded, when it names one): Unavailable when there is none.
  absl::Status Submit(std::shared_ptr<ActiveRequest> request) ABSL_LOCKS_EXCLUDED(mu_);
  // Requests that go to one group, in order (the samples of one prompt, which fork from the first); the group is
  // chosen for the first. An error leaves those before the refused one submitted.
  absl::Status SubmitTogether(std::span<const std::shared_ptr<ActiveRequest>> requests) ABSL_LOCKS_EXCLUDED(mu_);
  // LoRA adapters on every group that is up: loaded (groups that are down or unreachable are passed over; the
  // first group's error when one refuses, and then no group that took it in this call keeps it: ABORTED naming
  // those where unloading it again failed; UNAVAILABLE when every group is down), unloaded, listed (with how many
  // groups hold each), and whether any group holds one.
  // Admin calls run one at a time and make their RPCs outside mu_: a slow load (a large adapter, a worker that does
  // not answer until the deadline) holds up no request's Submit.
  absl::StatusOr<v1::Adapter> LoadAdapter(const std::string& name, const std::string& path)
      ABSL_LOCKS_EXCLUDED(admin_mu_, mu_);
  absl::Status UnloadAdapter(const std::string& name) ABSL_LOCKS_EXCLUDED(admin_mu_, mu_);
  std::vector<v1::Adapter> Adapters() const ABSL_LOCKS_EXCLUDED(mu_);
  bool HasAdapter(const std::string& name) const ABSL_LOCKS_EXCLUDED(mu_);
  // The peer router to forward a request to, when the groups this router schedules cannot take it (it holds
  // none, or all are full) or a group another router schedules is much less loaded than the least loaded here.
  // Empty: place it here.
  std::optional<std::string> ForwardTarget() const ABSL_LOCKS_EXCLUDED(mu_);
  // Groups a request can reach through this router: those it schedules and those it can forward to.
  int healthy() const ABSL_LOCKS_EXCLUDED(mu_);
  bool Contains(const std::string& address) const ABSL_LOCKS_EXCLUDED(mu_);
  // Groups whose address is not in `addresses` take no new requests, and leave once their requests are done.
  void Retain(const std::set<std::string>& addresses) ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<std::string> addresses() const ABSL_LOCKS_EXCLUDED(mu_);
  // For shutdown: no new requests (Unavailable), queued ones answered Unavailable, running ones go on.
  void Drain() ABSL_LOCKS_EXCLUDED(mu_);
  // Whether a request is still queued or running in some group.
  bool idle() const ABSL_LOCKS_EXCLUDED(mu_);
  // Stops and removes every group: what is still queued or running is answered Unavailable. Waits for an admin call
  // in flight to finish the RPC it has under way (it starts no other).
  void Stop() ABSL_LOCKS_EXCLUDED(admin_mu_, mu_);

 private:
  std::atomic<uint64_t> next_request_id_{1};
  // Held through an admin call's RPCs, which work on a copy of groups_ taken under mu_ (shared: a group retired
  // meanwhile lives until the call is done); Stop takes it after telling the call to start no RPC on a further group.
  absl::Mutex admin_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;
  std::shared_ptr<const ServedModel> model_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<WorkerGroup>> groups_ ABSL_GUARDED_BY(mu_);
  // Copies of groups_ under mu_.
  std::vector<std::shared_ptr<WorkerGroup>> GroupsNow() const ABSL_LOCKS_EXCLUDED(mu_);
  std::set<std::string> retired_ ABSL_GUARDED_BY(mu_);
  // The path each adapter name was last loaded from through LoadAdapter: requests go only to groups holding the
  // name from it, so a group that was down meanwhile and still holds an older adapter of that name serves none of
  // them. Names loaded at the workers' start are absent: any group holding the name serves it.
  std::map<std::string, std::string> adapter_paths_ ABSL_GUARDED_BY(mu_);
  // By adapter name, the groups where the admin call in flight is loading or unloading it: no request goes there
  // for that name until the call is over.
  std::map<std::string, std::set<const WorkerGroup*>> changing_ ABSL_GUARDED_BY(mu_);
  // Adds `group` to changing_[name]; false, adding nothing, once Stop has begun.
  bool StartChanging(const std::string& name, const WorkerGroup* group) ABSL_LOCKS_EXCLUDED(mu_);
  // LoadAdapter's RPCs on `groups`, all or nothing (see LoadAdapter).
  absl::StatusOr<v1::Adapter> LoadOnGroups(const std::vector<std::shared_ptr<WorkerGroup>>& groups,
                                           const std::string& name, const std::string& path)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(admin_mu_) ABSL_LOCKS_EXCLUDED(mu_);
  bool HoldsAsLoaded(const WorkerGroup& g, const std::string& adapter) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace gemma
