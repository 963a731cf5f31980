// The ports a launcher gives its ranks: each rank's metrics port is internal (past the pod's --metrics_port, which
// the launcher serves), and a clash with the pod's other ports is refused before anything starts.
#include "worker/rank_launcher.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace gemma {
namespace {

LaunchPlan Plan(int ranks) {
  LaunchPlan p;
  p.tp = ranks;
  p.ranks_per_host = ranks;
  p.leader = "127.0.0.1:29500";
  return p;
}

bool Has(const std::vector<std::string>& flags, const std::string& flag) {
  return std::find(flags.begin(), flags.end(), flag) != flags.end();
}

TEST(RankLauncherTest, RanksServeMetricsPastThePodsPort) {
  LauncherSettings s;
  s.port = 50051;
  s.peer_port = 29500;
  s.metrics_port = 9090;
  EXPECT_TRUE(Has(RankFlags(Plan(2), s, 0), "--metrics_port=9091"));
  EXPECT_TRUE(Has(RankFlags(Plan(2), s, 1), "--metrics_port=9092"));
  EXPECT_TRUE(CheckRankMetricsPorts(Plan(8), s).ok());
  s.metrics_port = 0;
  EXPECT_TRUE(Has(RankFlags(Plan(2), s, 1), "--metrics_port=0")) << "no --metrics_port, no metrics anywhere";
  EXPECT_TRUE(CheckRankMetricsPorts(Plan(2), s).ok());
}

TEST(RankLauncherTest, RankMetricsPortsMustNotTakeThePodsOtherPorts) {
  LauncherSettings s;
  s.port = 50051;
  s.peer_port = 9092;
  s.metrics_port = 9090;
  EXPECT_TRUE(CheckRankMetricsPorts(Plan(1), s).ok()) << "one rank only takes 9091";
  absl::Status clash = CheckRankMetricsPorts(Plan(2), s);
  EXPECT_EQ(clash.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(clash.message().find("ports 9091..9092"), std::string::npos) << clash;
  EXPECT_NE(clash.message().find("--peer_port 9092"), std::string::npos) << clash;
  s.peer_port = 29500;
  s.port = 9091;
  EXPECT_NE(CheckRankMetricsPorts(Plan(2), s).message().find("--port 9091"), std::string::npos);
  s.port = 50051;
  s.metrics_port = 65534;
  EXPECT_NE(CheckRankMetricsPorts(Plan(2), s).message().find("past 65535"), std::string::npos);
}

}  // namespace
}  // namespace gemma
