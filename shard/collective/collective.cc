#include "shard/collective/collective.h"

#include "absl/strings/str_cat.h"
#include "shard/collective/device_collective.h"

#include <algorithm>

namespace gemma {
namespace {

class SingleRank : public HostCollective {
 public:
  int rank() const override { return 0; }
  int world() const override { return 1; }
  absl::Status AllReduceSum(float* data, size_t count) override {
    return CheckCollectiveBuffers("all-reduce", data, data, count);
  }
  absl::Status AllGather(const float* in, size_t count, float* out) override {
    if (auto s = CheckCollectiveBuffers("all-gather", in, out, count); !s.ok()) return s;
    std::copy(in, in + count, out);
    return absl::OkStatus();
  }
  absl::Status Broadcast(std::string* bytes, int root) override { return CheckBroadcastArgs(*this, bytes, root); }
  absl::Status Barrier() override { return absl::OkStatus(); }
};

}  // namespace

absl::Status CheckCollectiveBuffers(const char* what, const void* in, const void* out, size_t count) {
  if (count > 0 && (in == nullptr || out == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " of ", count, " floats given a null buffer"));
  }
  return absl::OkStatus();
}

absl::Status CheckBroadcastArgs(const HostCollective& c, const std::string* bytes, int root) {
  if (bytes == nullptr) return absl::InvalidArgumentError("broadcast given no bytes");
  if (root < 0 || root >= c.world()) {
    return absl::InvalidArgumentError(absl::StrCat("broadcast root ", root, " is outside [0, ", c.world(), ")"));
  }
  return absl::OkStatus();
}

std::unique_ptr<HostCollective> MakeSingleRankCollective() { return std::make_unique<SingleRank>(); }

namespace {

absl::Status CheckRank(int c_rank, int c_world, int rank, int world) {
  if (c_world == world && c_rank == rank) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("weights are sliced for rank ", rank, "/", world,
                                                 " but the collective is rank ", c_rank, "/", c_world));
}

}  // namespace

absl::Status CheckCollectiveRank(const HostCollective& c, int rank, int world) {
  return CheckRank(c.rank(), c.world(), rank, world);
}

absl::Status CheckCollectiveRank(const DeviceCollective& c, int rank, int world) {
  return CheckRank(c.rank(), c.world(), rank, world);
}

}  // namespace gemma
