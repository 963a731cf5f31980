// A rolling restart under steady load, as local processes: one router and then one worker group are stopped
// (SIGTERM: they drain) and started again while clients keep sending requests. No request is lost: each ends with
// its full output, and a client that was answered UNAVAILABLE (a router or group going away) succeeds on retry.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "gemma/v1/gemma.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/processes.h"
#include "tests/testdata.h"

namespace gemma {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr int kPrompts = 8, kMaxNew = 64;

v1::GenerateRequest Greedy(int variant) {
  v1::GenerateRequest r;
  auto* ids = r.mutable_input()->mutable_token_ids();
  ids->add_ids(2);
  for (int i = 0; i < 5; ++i) ids->add_ids(700 + 131 * variant + 7 * i);
  r.mutable_parameters()->set_max_new_tokens(kMaxNew);
  return r;
}

struct Node {
  std::unique_ptr<testing::Process> process;
  int port = 0;
};

Node StartWorker(int port, const std::string& name) {
  return {testing::Start(WORKER_BINARY, {"--model=" + testing::GemmaTinyDir() + "/tiny-mqa",
                                         "--port=" + std::to_string(port), "--threads=1", "--kv_cache_mb=32",
                                         "--group_name=" + name, "--drain_timeout_ms=10000"}),
          port};
}

Node StartRouter(int port, int peer_port, int metrics_port, const std::string& workers) {
  return {testing::Start(ROUTER_BINARY, {"--plaintext", "--workers=" + workers, "--port=" + std::to_string(port),
                                         "--metrics_port=" + std::to_string(metrics_port),
                                         "--peer_port=" + std::to_string(peer_port),
                                         "--advertise_address=127.0.0.1:" + std::to_string(peer_port),
                                         "--lease_ttl_ms=3000", "--drain_timeout_ms=10000"}),
          port};
}

std::unique_ptr<v1::Gemma::Stub> Client(int port) {
  return v1::Gemma::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
}

// Serving through this router: it has groups to place or forward requests to.
bool Ready(int port, int groups) {
  v1::ModelInfo info;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(2));
  return Client(port)->GetModelInfo(&ctx, {}, &info).ok() && info.healthy_groups() == groups;
}

bool WaitReady(const std::vector<int>& routers, int groups, seconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  for (;;) {
    bool all = true;
    for (int port : routers) all = all && Ready(port, groups);
    if (all) return true;
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(milliseconds(100));
  }
}

TEST(RollingRestartTest, NoRequestIsLostWhileARouterAndAGroupRestart) {
  const int worker_ports[2] = {testing::FreePort(), testing::FreePort()};
  const std::string workers =
      "127.0.0.1:" + std::to_string(worker_ports[0]) + ",127.0.0.1:" + std::to_string(worker_ports[1]);
  Node group[2] = {StartWorker(worker_ports[0], "group-a"), StartWorker(worker_ports[1], "group-b")};
  const int router_ports[2] = {testing::FreePort(), testing::FreePort()};
  const int peer_ports[2] = {testing::FreePort(), testing::FreePort()};
  const int metrics_ports[2] = {testing::FreePort(), testing::FreePort()};
  Node router[2] = {StartRouter(router_ports[0], peer_ports[0], metrics_ports[0], workers),
                    StartRouter(router_ports[1], peer_ports[1], metrics_ports[1], workers)};
  // Sequences running on group a, as the router that schedules it counts them.
  auto running_on_a = [&] {
    double n = 0;
    for (int port : metrics_ports) {
      const std::string text = testing::HttpGet(port, "/metrics");
      const std::string name = "\ngemma_router_running_sequences{group=\"group-a\"} ";
      const size_t at = text.find(name);
      if (at != std::string::npos) n += std::stod(text.substr(at + name.size()));
    }
    return n;
  };
  auto logs = [&] {
    std::string all;
    for (const Node* n : {&router[0], &router[1], &group[0], &group[1]}) all += n->process->Err() + "\n----\n";
    return all;
  };
  ASSERT_TRUE(WaitReady({router_ports[0], router_ports[1]}, 2, seconds(60))) << logs();

  std::map<int, std::vector<int>> solo;
  for (int p = 0; p < kPrompts; ++p) {
    v1::GenerateResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(Client(router_ports[0])->Generate(&ctx, Greedy(p), &resp).ok());
    for (const auto& t : resp.tokens()) solo[p].push_back(t.id());
    ASSERT_FALSE(solo[p].empty());
  }

  // Clients: each request goes to one router, and on UNAVAILABLE to the other, until it succeeds.
  std::atomic<bool> stop{false};
  absl::Mutex mu;
  int completed = 0, retried = 0;
  std::vector<std::string> wrong, cut;
  std::vector<std::future<void>> clients;
  for (int c = 0; c < 6; ++c) {
    clients.push_back(std::async(std::launch::async, [&, c] {
      for (int n = 0; !stop; ++n) {
        const int prompt = (c * 3 + n) % kPrompts;
        grpc::Status status;
        std::vector<int> ids;
        int attempt = 0;
        for (; attempt < 60; ++attempt) {
          v1::GenerateResponse resp;
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + seconds(60));
          status = Client(router_ports[(c + n + attempt) % 2])->Generate(&ctx, Greedy(prompt), &resp);
          if (status.error_code() != grpc::StatusCode::UNAVAILABLE) {
            ids.clear();
            for (const auto& t : resp.tokens()) ids.push_back(t.id());
            break;
          }
          // Refused before it ran (a router away or draining its queue, no group to place it on) is what a
          // rolling restart may cost; a request cut while it ran (its group failed, or was taken over) is not.
          const std::string& m = status.error_message();
          if (m.find("failed; retry") != std::string::npos || m.find("took over") != std::string::npos) {
            absl::MutexLock lock(&mu);
            cut.push_back(m);
          }
          std::this_thread::sleep_for(milliseconds(100));
        }
        absl::MutexLock lock(&mu);
        retried += attempt > 0;
        if (!status.ok()) {
          wrong.push_back("status " + std::to_string(status.error_code()) + ": " + status.error_message());
        } else if (ids != solo[prompt]) {
          wrong.push_back("prompt " + std::to_string(prompt) + " gave other tokens");
        } else {
          ++completed;
        }
      }
    }));
  }
  auto completed_now = [&] {
    absl::MutexLock lock(&mu);
    return completed;
  };
  auto serves_meanwhile = [&](const char* phase) {
    const int before = completed_now();
    for (int i = 0; i < 300 && completed_now() < before + 8; ++i) std::this_thread::sleep_for(milliseconds(100));
    EXPECT_GE(completed_now(), before + 8) << "requests kept completing " << phase;
  };
  serves_meanwhile("before the restarts");

  // The router: it drains and exits 0; its groups are taken over by the other router meanwhile.
  ASSERT_EQ(::kill(router[0].process->pid, SIGTERM), 0);
  EXPECT_EQ(router[0].process->WaitExit(seconds(20)), 0) << logs();
  serves_meanwhile("while one router is down");
  router[0] = StartRouter(router_ports[0], peer_ports[0], metrics_ports[0], workers);
  ASSERT_TRUE(WaitReady({router_ports[0]}, 2, seconds(30))) << logs();
  serves_meanwhile("after the router came back");

  // A group: its leader drains (what runs finishes, nothing new comes) and exits 0. Stopped while it runs requests,
  // so that a group that did not drain would cut them.
  double running = running_on_a();  // a gauge: what one read saw, the next may not
  for (int i = 0; i < 1000 && running < 1; ++i) {
    std::this_thread::sleep_for(milliseconds(10));
    running = running_on_a();
  }
  ASSERT_GE(running, 1) << "group a ran nothing for 10 s\n" << logs();
  ASSERT_EQ(::kill(group[0].process->pid, SIGTERM), 0);
  EXPECT_EQ(group[0].process->WaitExit(seconds(20)), 0) << logs();
  serves_meanwhile("while one group is down");
  group[0] = StartWorker(worker_ports[0], "group-a");
  ASSERT_TRUE(WaitReady({router_ports[0], router_ports[1]}, 2, seconds(60))) << logs();
  serves_meanwhile("after the group came back");

  stop = true;
  for (auto& c : clients) c.get();
  absl::MutexLock lock(&mu);
  EXPECT_TRUE(wrong.empty()) << wrong.size() << " requests lost or wrong, first: " << wrong.front() << "\n" << logs();
  EXPECT_TRUE(cut.empty()) << cut.size() << " requests were cut while running, first: " << cut.front();
  EXPECT_GE(completed, 40);
  std::fprintf(stderr, "%d requests completed, %d of them after a retry\n", completed, retried);
}

}  // namespace
}  // namespace gemma
