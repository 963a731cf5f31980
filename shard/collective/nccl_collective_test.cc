// Creating NCCL collectives (label gpu; skips cleanly without a device or without NCCL in the build). What NCCL
// does once created (all-reduce, all-gather, broadcast, bad sizes, lost peers) is checked with every other
// collective in collective_conformance_test.cc.
#include "shard/collective/nccl_collective.h"

#include <vector>

#include "gtest/gtest.h"

#ifdef GEMMA_HAVE_NCCL
#include <cuda_runtime.h>
#endif

namespace gemma {
namespace {

#ifdef GEMMA_HAVE_NCCL
int DeviceCount() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}
#endif

TEST(NcclCollectiveTest, WithoutNcclInTheBuildItIsUnimplemented) {
#ifndef GEMMA_HAVE_NCCL
  EXPECT_FALSE(NcclAvailable());
  auto single = MakeSingleRankCollective();
  EXPECT_TRUE(absl::IsUnimplemented(CreateNcclCollective(*single, 0, std::chrono::seconds(5)).status()));
#else
  EXPECT_TRUE(NcclAvailable());
#endif
}

TEST(NcclCollectiveTest, BadDeviceIsAClearError) {
#ifdef GEMMA_HAVE_NCCL
  if (DeviceCount() == 0) {
    auto bootstrap = MakeSingleRankCollective();
    auto nccl = CreateNcclCollective(*bootstrap, 0, std::chrono::seconds(5));
    EXPECT_TRUE(absl::IsFailedPrecondition(nccl.status())) << nccl.status();
    return;
  }
  auto bootstrap = MakeSingleRankCollective();
  auto nccl = CreateNcclCollective(*bootstrap, DeviceCount() + 3, std::chrono::seconds(5));
  EXPECT_TRUE(absl::IsInvalidArgument(nccl.status())) << nccl.status();
#else
  GTEST_SKIP() << "built without NCCL";
#endif
}

}  // namespace
}  // namespace gemma
