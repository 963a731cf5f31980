// Worker groups found through DNS: a name's addresses are resolved, new groups join, gone ones drain and leave;
// and the router started on a name before any group exists serves once one appears.
#include "router/group_discovery.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <thread>

#include "gemma/v1/gemma.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/processes.h"
#include "tests/testdata.h"

namespace gemma {
namespace {

std::unique_ptr<testing::Process> StartWorker(int port) {
  return testing::Start(WORKER_BINARY, {"--model=" + testing::GemmaTinyDir() + "/tiny-mqa", "--threads=1",
                                        "--kv_cache_mb=16", "--port=" + std::to_string(port)});
}

TEST(ResolveAllTest, ResolvesNamesAndRejectsMalformedSpecs) {
  auto local = ResolveAll("localhost:5005");
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_TRUE(local->count("127.0.0.1:5005")) << "localhost resolves to 127.0.0.1";
  auto v6 = ResolveAll("[::1]:80");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(*v6, std::set<std::string>{"[::1]:80"});
  for (const char* bad : {"gemma-leaders", "gemma-leaders:", ":50051", "host:0", "host:70000", "host:http"}) {
    EXPECT_EQ(ResolveAll(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(ResolveAll("no-such-host.invalid:50051").status().code(), absl::StatusCode::kUnavailable);
}

TEST(GroupDiscoveryTest, GroupsJoinAndLeaveWithTheNamesAnswer) {
  const int port_a = testing::FreePort(), port_b = testing::FreePort();
  auto a = StartWorker(port_a);
  auto b = StartWorker(port_b);
  const std::string addr_a = "127.0.0.1:" + std::to_string(port_a), addr_b = "127.0.0.1:" + std::to_string(port_b);
  absl::StatusOr<std::set<std::string>> answer = std::set<std::string>{addr_a};
  GroupSet groups;
  GroupDiscovery discovery(
      [&] { return answer; },
      [&](const std::string& address) {
        // The workers started a moment ago may take a while to load on a busy machine (Connect waits for them);
        // an address where nobody listens is given up on sooner.
        const bool ours = address == addr_a || address == addr_b;
        return WorkerGroup::Connect(address, GroupOptions{}, std::chrono::seconds(ours ? 60 : 3));
      },
      &groups, std::chrono::seconds(1));
  EXPECT_EQ(groups.model(), nullptr);
  discovery.RefreshOnce();
  ASSERT_NE(groups.model(), nullptr) << "the first group fixes the model";
  EXPECT_EQ(groups.addresses(), std::vector<std::string>{addr_a});

  answer = std::set<std::string>{addr_a, addr_b};
  discovery.RefreshOnce();
  // The router takes the second group's lease a moment after the first (see LeaseOptions).
  for (int i = 0; i < 100 && groups.healthy() < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(groups.healthy(), 2);

  answer = absl::UnavailableError("DNS hiccup");
  discovery.RefreshOnce();
  EXPECT_EQ(groups.healthy(), 2) << "a failed lookup changes nothing";

  answer = std::set<std::string>{addr_b};
  discovery.RefreshOnce();
  EXPECT_EQ(groups.addresses(), std::vector<std::string>{addr_b}) << "a group gone from the answer leaves";
  EXPECT_FALSE(groups.Contains(addr_a)) << "an idle group that left is dropped at once";

  answer = std::set<std::string>{"127.0.0.1:1"};  // nobody there: not added, retried later, and B leaves
  discovery.RefreshOnce();
  EXPECT_EQ(groups.healthy(), 0);
  EXPECT_EQ(groups.Submit(nullptr).code(), absl::StatusCode::kUnavailable);
}

TEST(GroupDiscoveryTest, ARouterOnADnsNameServesOnceAGroupAppears) {
  const int worker_port = testing::FreePort();
  const std::string port_file = ::testing::TempDir() + "/router_dns_" + std::to_string(::getpid());
  std::remove(port_file.c_str());
  auto router = testing::Start(ROUTER_BINARY, {"--plaintext", "--workers_dns=localhost:" + std::to_string(worker_port),
                                               "--dns_refresh_ms=200", "--port_file=" + port_file});
  const int port = testing::WaitForPortFile(port_file, std::chrono::seconds(20));
  ASSERT_GT(port, 0) << router->Err();
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
  auto stub = v1::Gemma::NewStub(channel);
  auto health = grpc::health::v1::Health::NewStub(channel);
  auto serving = [&] {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckResponse resp;
    health->Check(&ctx, {}, &resp);
    return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  };
  {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    const grpc::Status s = stub->GetModelInfo(&ctx, {}, &info);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_NE(s.error_message().find("no worker group has joined yet"), std::string::npos) << s.error_message();
    EXPECT_FALSE(serving()) << "not ready without a group";
  }
  auto worker = StartWorker(worker_port);
  bool ready = false;
  for (int i = 0; i < 300 && !ready; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ready = serving();
  }
  ASSERT_TRUE(ready) << router->Err();
  grpc::ClientContext ctx;
  v1::GenerateRequest req;
  for (int id : {2, 3791, 323}) req.mutable_input()->mutable_token_ids()->add_ids(id);
  req.mutable_parameters()->set_max_new_tokens(3);
  v1::GenerateResponse resp;
  const grpc::Status s = stub->Generate(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.tokens_size(), 3);
}

}  // namespace
}  // namespace gemma
