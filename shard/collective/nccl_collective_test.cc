// NCCL collectives on the GPUs present (label gpu; skips cleanly without a device or without NCCL in the build).
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

TEST(NcclCollectiveTest, SingleRankCollectivesOnTheDevice) {
#ifndef GEMMA_HAVE_NCCL
  EXPECT_FALSE(NcclAvailable());
  auto single = MakeSingleRankCollective();
  EXPECT_TRUE(absl::IsUnimplemented(CreateNcclCollective(*single, 0, std::chrono::seconds(5)).status()));
  GTEST_SKIP() << "built without NCCL";
#else
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device present";
  auto bootstrap = MakeSingleRankCollective();
  auto nccl = CreateNcclCollective(*bootstrap, 0, std::chrono::seconds(30));
  ASSERT_TRUE(nccl.ok()) << nccl.status();
  DeviceCollective& c = **nccl;
  EXPECT_EQ(c.world(), 1);
  const std::vector<float> host = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f};
  float* dev = nullptr;
  float* gathered = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, host.size() * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&gathered, host.size() * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dev, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_TRUE(c.AllReduceSum(DeviceFloats(dev, host.size())).ok());
  ASSERT_TRUE(c.AllGather(DeviceFloats(dev, host.size()), DeviceFloats(gathered, host.size())).ok());
  EXPECT_EQ(c.AllGather(DeviceFloats(dev, host.size()), DeviceFloats(gathered, 1)).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> back(host.size());
  ASSERT_EQ(cudaMemcpy(back.data(), gathered, back.size() * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, host);  // a world of one: the sum and the gather are the identity
  std::string msg = "step bytes \x01\x02";
  ASSERT_TRUE(c.Broadcast(&msg, 0).ok());
  EXPECT_EQ(msg, "step bytes \x01\x02");
  ASSERT_TRUE(c.Barrier().ok());
  cudaFree(dev);
  cudaFree(gathered);
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
