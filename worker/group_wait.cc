#include "worker/group_wait.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gemma/worker/v1/rendezvous.grpc.pb.h"

namespace gemma {
namespace {

using Clock = std::chrono::steady_clock;

std::string StageKey(const std::string& stage, int rank) { return absl::StrCat("gemma/", stage, "/", rank); }

long long Seconds(Clock::duration d) {
  return static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(d).count());
}

}  // namespace

absl::Status WaitForGroup(const GroupWaitOptions& o) {
  auto stub = worker::v1::Rendezvous::NewStub(grpc::CreateChannel(o.leader, grpc::InsecureChannelCredentials()));
  const auto start = Clock::now();
  const auto end = start + o.timeout;
  auto next_progress = start + o.progress_every;
  const std::string budget = absl::StrCat("--group_wait_timeout_ms ", o.timeout.count());
  // Calls are cut into slices of at most a second, so progress is told on time and the timeout is kept.
  auto slice = [&] {
    return std::chrono::system_clock::now() +
           std::min<Clock::duration>(std::chrono::seconds(1), std::max<Clock::duration>(end - Clock::now(), {}));
  };
  auto progress_due = [&] {
    if (Clock::now() < next_progress) return false;
    next_progress = Clock::now() + o.progress_every;
    return true;
  };

  worker::v1::SetRequest set;
  set.set_key(StageKey(o.stage, o.rank));
  while (true) {
    grpc::ClientContext ctx;
    ctx.set_deadline(slice());
    ctx.set_wait_for_ready(true);  // the leader may not be up yet
    worker::v1::SetResponse ignored;
    if (stub->Set(&ctx, set, &ignored).ok()) break;
    if (Clock::now() >= end) {
      return absl::DeadlineExceededError(absl::StrCat("rank ", o.rank, " could not reach the group leader's "
                                                      "rendezvous at ", o.leader, " within ", budget));
    }
    if (progress_due() && o.log) {
      o.log(absl::StrCat("rank ", o.rank, ": waiting for the group leader at ", o.leader, " (",
                         Seconds(Clock::now() - start), " s of ", Seconds(end - start), " s)"));
    }
  }

  std::vector<bool> arrived(o.world, false);
  arrived[o.rank] = true;
  auto list = [&](bool which) {
    std::vector<int> ranks;
    for (int r = 0; r < o.world; ++r) {
      if (arrived[r] == which) ranks.push_back(r);
    }
    return absl::StrJoin(ranks, ", ");
  };
  while (std::count(arrived.begin(), arrived.end(), true) < o.world) {
    for (int r = 0; r < o.world; ++r) {
      if (arrived[r]) continue;
      grpc::ClientContext ctx;
      // Long enough for the leader to answer, short enough to poll every missing rank within a slice.
      ctx.set_deadline(std::min(slice(), std::chrono::system_clock::now() + std::chrono::milliseconds(200)));
      worker::v1::GetRequest get;
      get.add_keys(StageKey(o.stage, r));
      worker::v1::GetResponse values;
      if (stub->Get(&ctx, get, &values).ok()) arrived[r] = true;
    }
    const int count = static_cast<int>(std::count(arrived.begin(), arrived.end(), true));
    if (count == o.world) break;
    if (Clock::now() >= end) {
      return absl::DeadlineExceededError(absl::StrCat("rank ", o.rank, ": rank(s) ", list(false),
                                                      " of the group never ", o.stage, " within ", budget,
                                                      "; ", o.stage, ": ", list(true)));
    }
    if (progress_due() && o.log) {
      o.log(absl::StrCat("rank ", o.rank, ": ", count, " of ", o.world, " ranks ", o.stage, " (", list(true),
                         "); waiting for ", list(false), " (", Seconds(Clock::now() - start), " s of ",
                         Seconds(end - start), " s)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace gemma
