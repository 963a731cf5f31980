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
  absl::Status AllReduceSum(float*, size_t) override { return absl::OkStatus(); }
  absl::Status AllGather(const float* in, size_t count, float* out) override {
    std::copy(in, in + count, out);
    return absl::OkStatus();
  }
  absl::Status Broadcast(std::string*, int) override { return absl::OkStatus(); }
  absl::Status Barrier() override { return absl::OkStatus(); }
};

}  // namespace

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
