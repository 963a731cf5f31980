#include "worker/worker_options.h"

#include "gtest/gtest.h"

namespace gemma {
namespace {

TEST(WorkerOptionsTest, LeaderOfAGroupWithinAStatefulSet) {
  EXPECT_EQ(*ExpandLeader("{leader}.gemma-worker:29500", "gemma-worker-3", 2), "gemma-worker-2.gemma-worker:29500");
  EXPECT_EQ(*ExpandLeader("{leader}.gemma-worker:29500", "gemma-worker-5", 4), "gemma-worker-4.gemma-worker:29500");
  EXPECT_EQ(*ExpandLeader("{leader}.w:1", "gemma-7b-tp2-1", 2), "gemma-7b-tp2-0.w:1");
  EXPECT_EQ(*ExpandLeader("10.0.0.7:29500", "anything", 2), "10.0.0.7:29500");
  const auto bad = ExpandLeader("{leader}.w:1", "laptop", 2);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("laptop"), std::string::npos);
}

TEST(WorkerOptionsTest, OrdinalFromStatefulSetHostname) {
  EXPECT_EQ(OrdinalFromHostname("gemma-worker-0"), 0);
  EXPECT_EQ(OrdinalFromHostname("gemma-7b-tp2-group-1-3"), 3);
  EXPECT_EQ(OrdinalFromHostname("worker"), -1);
  EXPECT_EQ(OrdinalFromHostname("worker-x"), -1);
}

}  // namespace
}  // namespace gemma
