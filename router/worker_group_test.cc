// How a worker group's ModelInfo becomes its engine's scheduling limits.
#include "router/worker_group.h"

#include "gtest/gtest.h"

namespace gemma {
namespace {

TEST(ClampToWorkerTest, TheWorkersAdapterLimitReachesTheScheduler) {
  SchedulerLimits router;
  router.max_adapters_per_step = 5;  // whatever the router had: the worker's word is the limit
  worker::v1::ModelInfo info;
  info.set_max_loras_per_step(3);
  EXPECT_EQ(ClampToWorker(router, info).max_adapters_per_step, 3);
  info.set_max_loras_per_step(0);  // a CPU worker: any number
  EXPECT_EQ(ClampToWorker(router, info).max_adapters_per_step, 0);
}

}  // namespace
}  // namespace gemma
