// Which ranks a launcher pod starts, from flags and the environment of a plain pod or a LeaderWorkerSet.
#include "worker/launch_plan.h"

#include <map>

#include "gtest/gtest.h"

namespace gemma {
namespace {

absl::StatusOr<std::optional<LaunchPlan>> Plan(int tp, int per_host, std::map<std::string, std::string> env,
                                               const std::string& leader = "") {
  return MakeLaunchPlan(tp, per_host, leader, 29500, [env](const char* name) {
    auto it = env.find(name);
    return it == env.end() ? std::string() : it->second;
  });
}

TEST(LaunchPlanTest, WithoutTpOrLwsThisProcessIsOneRank) {
  auto p = Plan(-1, 0, {});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_FALSE(p->has_value());
  p = Plan(0, 0, {{"LWS_GROUP_SIZE", "4"}});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_FALSE(p->has_value()) << "--tp 0 is a rank started by a launcher, whatever the environment";
}

TEST(LaunchPlanTest, TpAloneStartsTheWholeGroupOnLoopback) {
  auto p = Plan(4, 0, {{"GEMMA_LEADER", "elsewhere:1"}});
  ASSERT_TRUE(p.ok() && p->has_value()) << p.status();
  EXPECT_EQ((*p)->tp, 4);
  EXPECT_EQ((*p)->ranks_per_host, 4);
  EXPECT_EQ((*p)->first_rank(), 0);
  EXPECT_EQ((*p)->leader, "127.0.0.1:29500");
}

TEST(LaunchPlanTest, LeaderWorkerSetGivesTheDegreeHostIndexAndLeader) {
  auto p = Plan(-1, 2, {{"LWS_GROUP_SIZE", "3"}, {"LWS_WORKER_INDEX", "2"}, {"LWS_LEADER_ADDRESS", "g-0.g"}});
  ASSERT_TRUE(p.ok() && p->has_value()) << p.status();
  EXPECT_EQ((*p)->tp, 6);
  EXPECT_EQ((*p)->ranks_per_host, 2);
  EXPECT_EQ((*p)->first_rank(), 4);
  EXPECT_EQ((*p)->leader, "g-0.g:29500");
  // --tp with LWS: ranks per host follow; GEMMA_* wins over LWS_*.
  p = Plan(8, 0, {{"LWS_GROUP_SIZE", "2"}, {"LWS_WORKER_INDEX", "0"}, {"GEMMA_HOST_INDEX", "1"},
                  {"GEMMA_LEADER", "lead:7000"}, {"LWS_LEADER_ADDRESS", "other"}});
  ASSERT_TRUE(p.ok() && p->has_value()) << p.status();
  EXPECT_EQ((*p)->ranks_per_host, 4);
  EXPECT_EQ((*p)->first_rank(), 4);
  EXPECT_EQ((*p)->leader, "lead:7000");
}

TEST(LaunchPlanTest, BadCombinationsSayWhatIsAllowed) {
  auto error = [](absl::StatusOr<std::optional<LaunchPlan>> p) {
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(p.status().message());
  };
  EXPECT_NE(error(Plan(4, 3, {})).find("--ranks_per_host 3 does not divide --tp 4"), std::string::npos);
  EXPECT_NE(error(Plan(-2, 0, {})).find("allowed: 0 (one rank) or 1..1024"), std::string::npos);
  EXPECT_NE(error(Plan(4, 2, {{"GEMMA_HOST_INDEX", "2"}, {"GEMMA_LEADER", "x"}})).find("GEMMA_HOST_INDEX=\"2\" is invalid; allowed: 0..1"),
            std::string::npos);
  EXPECT_NE(error(Plan(4, 2, {{"GEMMA_HOST_INDEX", "0"}})).find("needs its leader's address"), std::string::npos);
  EXPECT_NE(error(Plan(6, 0, {{"LWS_GROUP_SIZE", "4"}})).find("allowed: a multiple of 4"), std::string::npos);
  EXPECT_NE(error(Plan(4, 1, {{"LWS_GROUP_SIZE", "2"}})).find("LWS_GROUP_SIZE=2"), std::string::npos);
  EXPECT_NE(error(Plan(-1, 0, {{"LWS_GROUP_SIZE", "two"}})).find("LWS_GROUP_SIZE=\"two\" is invalid"), std::string::npos);
  EXPECT_NE(error(Plan(0, 2, {})).find("--ranks_per_host needs --tp"), std::string::npos);
}

TEST(LaunchPlanTest, AGroupOverHostsNeedsThisHostsIndex) {
  // Without an index every host would start as host 0: two rank 0s that wait out the group wait timeout.
  auto p = Plan(4, 2, {{"GEMMA_LEADER", "lead:7000"}});
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  std::string message(p.status().message());
  EXPECT_NE(message.find("GEMMA_HOST_INDEX"), std::string::npos) << message;
  EXPECT_NE(message.find("LWS_WORKER_INDEX"), std::string::npos) << message;
  EXPECT_NE(message.find("allowed: 0 to 1"), std::string::npos) << message;
  p = Plan(-1, 2, {{"LWS_GROUP_SIZE", "3"}, {"LWS_LEADER_ADDRESS", "g-0.g"}});
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  // One host needs no index: the whole group is this pod.
  p = Plan(4, 4, {});
  ASSERT_TRUE(p.ok() && p->has_value()) << p.status();
  EXPECT_EQ((*p)->first_rank(), 0);
}

}  // namespace
}  // namespace gemma
