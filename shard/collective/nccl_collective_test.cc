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

// The all-reduce a decode graph captures: enqueued on the caller's stream, captured into a CUDA graph, replayed,
// waited for through the collective. One rank: the sum leaves the data as it was.
TEST(NcclCollectiveTest, AnAllReduceOnTheCallersStreamIsCapturedIntoAGraph) {
#ifdef GEMMA_HAVE_NCCL
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device present";
  auto bootstrap = MakeSingleRankCollective();
  auto nccl = CreateNcclCollective(*bootstrap, 0, std::chrono::seconds(30));
  ASSERT_TRUE(nccl.ok()) << nccl.status();
  const std::vector<float> values = {1.5f, -2.0f, 3.25f, 7.0f};
  float* data = nullptr;
  ASSERT_EQ(cudaMalloc(&data, values.size() * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(data, values.data(), values.size() * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_TRUE((*nccl)->EnqueueAllReduceSum(DeviceFloats(data, values.size()), stream).ok());
  ASSERT_TRUE((*nccl)->WaitStream(stream).ok());
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  const absl::Status enqueued = (*nccl)->EnqueueAllReduceSum(DeviceFloats(data, values.size()), stream);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_TRUE(enqueued.ok()) << enqueued;
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_TRUE((*nccl)->WaitStream(stream).ok());
  std::vector<float> got(values.size());
  ASSERT_EQ(cudaMemcpy(got.data(), data, got.size() * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(got, values);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
  cudaFree(data);
#else
  GTEST_SKIP() << "built without NCCL";
#endif
}

}  // namespace
}  // namespace gemma
