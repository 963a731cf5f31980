#include "shard/collective/collective.h"

#include "absl/strings/str_cat.h"

#include <algorithm>

namespace gemma {
namespace {

class SingleRank : public Collective {
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

std::unique_ptr<Collective> MakeSingleRankCollective() { return std::make_unique<SingleRank>(); }

absl::Status CheckCollectiveRank(const Collective& c, int rank, int world) {
  if (c.world() == world && c.rank() == rank) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("weights are sliced for rank ", rank, "/", world,
                                                 " but the collective is rank ", c.rank(), "/", c.world()));
}

}  // namespace gemma
