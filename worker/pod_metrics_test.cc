// The pod's one metrics port: each rank's families once, with every rank's samples, and a rank that does not answer
// in time shows as gemma_worker_rank_up 0 instead of holding up or spoiling the scrape.
#include "worker/pod_metrics.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "monitoring/metrics_server.h"
#include "prometheus/histogram.h"

namespace gemma {
namespace {

size_t Count(const std::string& text, const std::string& part) {
  size_t n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

// A rank's own endpoint on a free loopback port, with one step recorded.
struct FakeRank {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<prometheus::Exposer> exposer;
  int port = 0;
  explicit FakeRank(int rank) {
    prometheus::BuildHistogram()
        .Name("gemma_worker_rank_step_duration_seconds")
        .Help("step")
        .Register(*registry)
        .Add({{"rank", std::to_string(rank)}}, prometheus::Histogram::BucketBoundaries{0.1, 1})
        .Observe(0.5);
    exposer = std::move(*ServeMetrics("127.0.0.1:0", registry));
    port = exposer->GetListeningPorts().at(0);
  }
};

// A port that accepts connections and never answers: a hung rank.
struct SilentPort {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  int port = 0;
  SilentPort() {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    ::bind(fd, reinterpret_cast<sockaddr*>(&addr), len);
    ::listen(fd, 4);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
  }
  ~SilentPort() { ::close(fd); }
};

TEST(PodMetricsTest, OneScrapeCarriesEveryRankAndSkipsAHungOne) {
  FakeRank rank4(4), rank5(5);
  SilentPort hung, hung_too;
  // Each rank gets 2 s (room for a loaded machine): asked at once, the two hung ones cost 2 s together; one after
  // the other they would cost 4.
  auto pod = PodMetrics::Serve("127.0.0.1:0", 4, {rank4.port, rank5.port, hung.port, hung_too.port},
                               std::chrono::seconds(2));
  ASSERT_TRUE(pod.ok()) << pod.status();
  const auto start = std::chrono::steady_clock::now();
  const std::string text = (*pod)->Scrape();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(3500)) << "the ranks are asked at once";
  EXPECT_EQ(Count(text, "# TYPE gemma_worker_rank_step_duration_seconds histogram\n"), 1u) << text;
  EXPECT_EQ(Count(text, "# HELP gemma_worker_rank_step_duration_seconds "), 1u) << text;
  EXPECT_NE(text.find("gemma_worker_rank_step_duration_seconds_count{rank=\"4\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("gemma_worker_rank_step_duration_seconds_count{rank=\"5\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("gemma_worker_rank_up{rank=\"4\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("gemma_worker_rank_up{rank=\"5\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("gemma_worker_rank_up{rank=\"6\"} 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("gemma_worker_rank_up{rank=\"7\"} 0\n"), std::string::npos) << text;
}

TEST(PodMetricsTest, APortInUseIsReported) {
  FakeRank rank0(0);
  auto pod = PodMetrics::Serve("127.0.0.1:" + std::to_string(rank0.port), 0, {}, std::chrono::milliseconds(300));
  EXPECT_EQ(pod.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace gemma
