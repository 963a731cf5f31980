#include "worker/worker_options.h"

#include "gtest/gtest.h"

namespace gemma {
namespace {

TEST(WorkerOptionsTest, OrdinalFromStatefulSetHostname) {
  EXPECT_EQ(OrdinalFromHostname("gemma-worker-0"), 0);
  EXPECT_EQ(OrdinalFromHostname("gemma-7b-tp2-group-1-3"), 3);
  EXPECT_EQ(OrdinalFromHostname("worker"), -1);
  EXPECT_EQ(OrdinalFromHostname("worker-x"), -1);
}

}  // namespace
}  // namespace gemma
