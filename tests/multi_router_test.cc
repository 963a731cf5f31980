// Several routers in front of the same worker groups, as processes on loopback: each group is scheduled by one
// router at a time (a lease with a fencing epoch), a router forwards what it cannot place, a killed router's
// groups are taken over, and a router that stalled past its lease cannot write a group's KV cache any more.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <map>
#include <thread>

#include "gemma/v1/gemma.grpc.pb.h"
#include "gemma/worker/v1/worker.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/processes.h"
#include "tests/testdata.h"

namespace gemma {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr int kLeaseTtlMs = 3000;  // renewed every 1 s: a router stalled a second on a loaded machine keeps its groups

struct Worker {
  std::unique_ptr<testing::Process> process;
  int port = 0;
  std::string name;  // the group's name, its metrics label
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
  worker::v1::LeaseState Lease() const {
    auto stub = worker::v1::Worker::NewStub(grpc::CreateChannel(address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(5));
    worker::v1::LeaseState state;
    EXPECT_TRUE(stub->GetLease(&ctx, {}, &state).ok());
    return state;
  }
};

Worker StartWorker(const std::string& name) {
  Worker w;
  w.port = testing::FreePort();
  w.name = name;
  w.process = testing::Start(WORKER_BINARY, {"--model=" + testing::GemmaTinyDir() + "/tiny-mqa",
                                             "--port=" + std::to_string(w.port), "--threads=1", "--kv_cache_mb=32",
                                             "--group_name=" + name});
  return w;
}

struct Router {
  std::unique_ptr<testing::Process> process;
  int port = 0, peer_port = 0, metrics_port = 0;
  std::unique_ptr<v1::Gemma::Stub> stub;
  std::string peer_address() const { return "127.0.0.1:" + std::to_string(peer_port); }
  int HealthyGroups() const {
    v1::ModelInfo info;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(5));
    return stub->GetModelInfo(&ctx, {}, &info).ok() ? info.healthy_groups() : -1;
  }
  double Metric(const std::string& name) const {
    const std::string text = testing::HttpGet(metrics_port, "/metrics");
    const size_t at = text.find("\n" + name + " ");
    return at == std::string::npos ? -1 : std::stod(text.substr(at + name.size() + 2));  // -1: not exported
  }
};

Router StartRouter(const std::vector<const Worker*>& groups) {
  static int n = 0;
  const std::string port_file = ::testing::TempDir() + "/multi_router_" + std::to_string(::getpid()) + "_" +
                                std::to_string(n++);
  std::remove(port_file.c_str());
  std::string workers;
  for (const Worker* w : groups) workers += (workers.empty() ? "" : ",") + w->address();
  Router r;
  r.peer_port = testing::FreePort();
  r.metrics_port = testing::FreePort();
  r.process = testing::Start(ROUTER_BINARY, {"--plaintext", "--workers=" + workers, "--port_file=" + port_file,
                                             "--peer_port=" + std::to_string(r.peer_port),
                                             "--advertise_address=" + r.peer_address(),
                                             "--lease_ttl_ms=" + std::to_string(kLeaseTtlMs),
                                             "--metrics_port=" + std::to_string(r.metrics_port)});
  r.port = testing::WaitForPortFile(port_file, seconds(30));
  r.stub = v1::Gemma::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(r.port), grpc::InsecureChannelCredentials()));
  return r;
}

v1::GenerateRequest Greedy(int variant, int max_new) {
  v1::GenerateRequest r;
  auto* ids = r.mutable_input()->mutable_token_ids();
  ids->add_ids(2);
  for (int i = 0; i < 6; ++i) ids->add_ids(300 + 97 * variant + 11 * i);
  r.mutable_parameters()->set_max_new_tokens(max_new);
  return r;
}

struct Outcome {
  grpc::Status status;
  std::vector<int> ids;
};

Outcome Stream(v1::Gemma::Stub& stub, const v1::GenerateRequest& req, grpc::ClientContext* ctx,
               std::promise<void>* first_token = nullptr) {
  Outcome out;
  auto reader = stub.GenerateStream(ctx, req);
  v1::GenerateStreamResponse event;
  while (reader->Read(&event)) {
    if (event.has_token() && event.token().has_token()) {
      out.ids.push_back(event.token().token().id());
      if (first_token != nullptr && out.ids.size() == 1) first_token->set_value();
    }
  }
  out.status = reader->Finish();
  if (first_token != nullptr && out.ids.empty()) first_token->set_value();
  return out;
}

Outcome Generate(v1::Gemma::Stub& stub, const v1::GenerateRequest& req) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(120));
  return Stream(stub, req, &ctx);
}

// Waits until `ready` holds, up to `limit`; how long it took, or `limit` when it never did.
template <typename Ready>
milliseconds WaitFor(Ready ready, milliseconds limit) {
  const auto start = std::chrono::steady_clock::now();
  while (!ready()) {
    if (std::chrono::steady_clock::now() - start > limit) return limit;
    std::this_thread::sleep_for(milliseconds(50));
  }
  return std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start);
}

// Router A knows group a only and takes it; router B takes group b (a is A's); router C knows both and holds
// none, so it forwards everything, and is there to take over.
class MultiRouterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    a_ = StartWorker("group-a");
    b_ = StartWorker("group-b");
    router_a_ = StartRouter({&a_});
    ASSERT_GT(router_a_.port, 0) << router_a_.process->Err();
    router_b_ = StartRouter({&a_, &b_});
    ASSERT_GT(router_b_.port, 0) << router_b_.process->Err();
    router_c_ = StartRouter({&a_, &b_});
    ASSERT_GT(router_c_.port, 0) << router_c_.process->Err();
    ASSERT_LT(WaitFor([&] { return router_c_.HealthyGroups() == 2 && router_b_.HealthyGroups() == 2; }, seconds(10)),
              seconds(10));
    ASSERT_EQ(a_.Lease().holder_address(), router_a_.peer_address());
    ASSERT_EQ(b_.Lease().holder_address(), router_b_.peer_address());
  }
  void TearDown() override {
    if (HasFailure()) {
      for (const Router* r : {&router_a_, &router_b_, &router_c_}) {
        if (r->process) std::fprintf(stderr, "router log:\n%s\n", r->process->Err().c_str());
      }
    }
  }

  // Each prompt's tokens alone, through router A's own group (nothing else running).
  std::map<int, std::vector<int>> SoloRuns(int prompts, int max_new) {
    std::map<int, std::vector<int>> solo;
    for (int p = 0; p < prompts; ++p) {
      Outcome o = Generate(*router_a_.stub, Greedy(p, max_new));
      EXPECT_TRUE(o.status.ok()) << o.status.error_message();
      solo[p] = o.ids;
    }
    return solo;
  }

  Worker a_, b_;
  Router router_a_, router_b_, router_c_;
};

TEST_F(MultiRouterTest, SixtyFourConcurrentRequestsOverThreeRoutersEachEqualTheirSoloRun) {
  constexpr int kPrompts = 16, kMaxNew = 12;
  const auto solo = SoloRuns(kPrompts, kMaxNew);
  const Router* routers[] = {&router_a_, &router_b_, &router_c_};
  std::vector<std::future<Outcome>> calls;
  for (int i = 0; i < 64; ++i) {
    calls.push_back(std::async(std::launch::async, [&, i] {
      return Generate(*routers[i % 3]->stub, Greedy(i % kPrompts, kMaxNew));
    }));
  }
  for (int i = 0; i < 64; ++i) {
    const Outcome o = calls[i].get();
    ASSERT_TRUE(o.status.ok()) << "request " << i << ": " << o.status.error_message();
    EXPECT_EQ(o.ids, solo.at(i % kPrompts)) << "request " << i << " through router " << i % 3;
  }
  // C holds no group: what came in through it was scheduled by A or B.
  EXPECT_GE(router_c_.Metric("gemma_router_forwarded_requests_total"), 21);
  EXPECT_EQ(router_c_.Metric("gemma_router_group_owned{group=\"" + a_.name + "\"}"), 0);
  EXPECT_EQ(router_a_.Metric("gemma_router_group_owned{group=\"" + a_.name + "\"}"), 1);
  // Still one holder per group, and not the same one.
  EXPECT_EQ(a_.Lease().holder_address(), router_a_.peer_address());
  EXPECT_EQ(b_.Lease().holder_address(), router_b_.peer_address());
}

TEST_F(MultiRouterTest, ScoreWithActivationsAndScoreStreamAreForwardedWhole) {
  v1::ScoreRequest req;
  for (int id : {2, 514, 1242, 1332, 1742, 755}) req.mutable_input()->mutable_token_ids()->add_ids(id);
  req.mutable_activations()->set_all_residual(true);
  req.mutable_activations()->add_positions(1);
  req.mutable_activations()->add_positions(5);
  v1::ScoreResponse direct, forwarded;
  for (auto [router, resp] : {std::pair{&router_a_, &direct}, std::pair{&router_c_, &forwarded}}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(60));
    const grpc::Status s = router->stub->Score(&ctx, req, resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  ASSERT_GT(direct.activations_size(), 0);
  EXPECT_EQ(forwarded.SerializeAsString(), direct.SerializeAsString());
  // C holds no group: the stream is relayed from the router that scheduled it, message for message.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(60));
  auto reader = router_c_.stub->ScoreStream(&ctx, req);
  std::vector<v1::ScoreStreamResponse> messages;
  for (v1::ScoreStreamResponse m; reader->Read(&m);) messages.push_back(m);
  const grpc::Status s = reader->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(messages.size(), 1u + direct.activations_size());
  EXPECT_EQ(messages[0].scores().logprobs_size(), direct.logprobs_size());
  for (int i = 0; i < direct.activations_size(); ++i) {
    EXPECT_EQ(messages[i + 1].activation().SerializeAsString(), direct.activations(i).SerializeAsString()) << i;
  }
  EXPECT_GE(router_c_.Metric("gemma_router_forwarded_requests_total"), 2);
}

TEST_F(MultiRouterTest, AKilledRouterLosesOnlyItsOwnStreamsAndItsGroupIsTakenOver) {
  // Three each: B places them on its own group (it forwards only to a group much less loaded than its own).
  constexpr int kMaxNew = 480, kEach = 3;
  const auto solo = SoloRuns(kEach, kMaxNew);
  std::vector<std::future<Outcome>> through_a, through_b;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::promise<void>> started(2 * kEach);
  for (int i = 0; i < kEach; ++i) {
    for (auto* side : {&through_a, &through_b}) {
      const Router& r = side == &through_a ? router_a_ : router_b_;
      auto& ctx = contexts.emplace_back(std::make_unique<grpc::ClientContext>());
      ctx->set_deadline(std::chrono::system_clock::now() + seconds(120));
      std::promise<void>* first = &started[contexts.size() - 1];
      side->push_back(std::async(std::launch::async, [&r, i, c = ctx.get(), first] {
        return Stream(*r.stub, Greedy(i, kMaxNew), c, first);
      }));
    }
  }
  for (auto& s : started) s.get_future().wait();
  router_b_.process->Kill();
  // C takes group b over once B's lease lapses: within the ttl and C's next poll (with slack for a loaded machine).
  const milliseconds took = WaitFor([&] { return b_.Lease().holder_address() == router_c_.peer_address(); },
                                    milliseconds(kLeaseTtlMs + 4000));
  EXPECT_LT(took, milliseconds(kLeaseTtlMs + 4000)) << "group b was not taken over";
  for (int i = 0; i < kEach; ++i) {
    const Outcome o = through_a[i].get();
    ASSERT_TRUE(o.status.ok()) << o.status.error_message();
    EXPECT_EQ(o.ids, solo.at(i)) << "a stream of a surviving router";
    EXPECT_FALSE(through_b[i].get().status.ok()) << "the killed router's stream cannot have finished";
  }
  // The worker records C as holder before C has read its answer and counted the takeover: wait for the count.
  WaitFor([&] { return router_c_.Metric("gemma_router_lease_takeovers_total") >= 1; }, seconds(5));
  EXPECT_EQ(router_c_.Metric("gemma_router_lease_takeovers_total"), 1);
  const Outcome after = Generate(*router_c_.stub, Greedy(1, 16));
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.ids, std::vector<int>(solo.at(1).begin(), solo.at(1).begin() + 16));
}

TEST_F(MultiRouterTest, ARouterThatStalledPastItsLeaseIsFencedOffAndItsStreamEndsUnavailable) {
  const auto solo = SoloRuns(3, 200);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(120));
  std::promise<void> first;
  auto stalled = std::async(std::launch::async, [&] { return Stream(*router_b_.stub, Greedy(0, 200), &ctx, &first); });
  first.get_future().wait();
  ASSERT_EQ(::kill(router_b_.process->pid, SIGSTOP), 0);
  const uint64_t b_epoch = b_.Lease().epoch();
  // While B is stopped, C takes group b over and runs a request on it: its KV blocks overwrite B's.
  const milliseconds took = WaitFor([&] { return b_.Lease().holder_address() == router_c_.peer_address(); },
                                    milliseconds(kLeaseTtlMs + 4000));
  EXPECT_LT(took, milliseconds(kLeaseTtlMs + 4000));
  EXPECT_GT(b_.Lease().epoch(), b_epoch);
  const Outcome on_b = Generate(*router_c_.stub, Greedy(1, 200));
  ASSERT_TRUE(on_b.status.ok()) << on_b.status.error_message();
  EXPECT_EQ(on_b.ids, solo.at(1));
  // B wakes up: its next step carries the old epoch and is refused, so its stream ends UNAVAILABLE rather than go
  // on from blocks that are no longer its own.
  ASSERT_EQ(::kill(router_b_.process->pid, SIGCONT), 0);
  const Outcome o = stalled.get();
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE) << o.status.error_message();
  EXPECT_NE(o.status.error_message().find("took over"), std::string::npos) << o.status.error_message();
  EXPECT_LT(o.ids.size(), 200u);
  EXPECT_TRUE(std::equal(o.ids.begin(), o.ids.end(), solo.at(0).begin())) << "what it streamed before was right";
  // B is a router like C now: what comes in through it is forwarded and right.
  const Outcome again = Generate(*router_b_.stub, Greedy(2, 200));
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_EQ(again.ids, solo.at(2));
  EXPECT_EQ(b_.Lease().holder_address(), router_c_.peer_address());
}

TEST_F(MultiRouterTest, AStoppingRouterLetsTheStreamsItRelaysFinish) {
  const auto solo = SoloRuns(2, 400);
  std::vector<std::future<Outcome>> relayed;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::promise<void>> started(2);
  for (int i = 0; i < 2; ++i) {
    auto& ctx = contexts.emplace_back(std::make_unique<grpc::ClientContext>());
    ctx->set_deadline(std::chrono::system_clock::now() + seconds(120));
    relayed.push_back(std::async(std::launch::async, [&, i, c = ctx.get()] {
      return Stream(*router_c_.stub, Greedy(i, 400), c, &started[i]);
    }));
  }
  for (auto& s : started) s.get_future().wait();
  // C holds no group: its streams run on A or B, but their clients are connected to C.
  ASSERT_EQ(::kill(router_c_.process->pid, SIGTERM), 0);
  for (int i = 0; i < 2; ++i) {
    const Outcome o = relayed[i].get();
    ASSERT_TRUE(o.status.ok()) << o.status.error_message();
    EXPECT_EQ(o.ids, solo.at(i));
  }
  EXPECT_EQ(router_c_.process->WaitExit(seconds(20)), 0);
}

// A router that restarted finds every group held by the others; one that holds several gives an idle one back.
TEST(MultiRouterRebalanceTest, ARouterWithoutGroupsIsGivenOne) {
  Worker a = StartWorker("group-a"), b = StartWorker("group-b");
  Router first = StartRouter({&a, &b});
  ASSERT_GT(first.port, 0) << first.process->Err();
  ASSERT_LT(WaitFor([&] { return a.Lease().holder_address() == first.peer_address() &&
                                 b.Lease().holder_address() == first.peer_address(); },
                    seconds(10)),
            seconds(10))
      << "a router alone takes every group";
  Router second = StartRouter({&a, &b});
  ASSERT_GT(second.port, 0) << second.process->Err();
  const milliseconds took = WaitFor([&] {
    return a.Lease().holder_address() == second.peer_address() || b.Lease().holder_address() == second.peer_address();
  }, seconds(15));
  EXPECT_LT(took, seconds(15)) << first.process->Err() << second.process->Err();
  EXPECT_NE(a.Lease().holder_address(), b.Lease().holder_address());
  // Both still serve every request, each through its own group or the other's.
  for (const Router* r : {&first, &second}) {
    const Outcome o = Generate(*r->stub, Greedy(3, 8));
    EXPECT_TRUE(o.status.ok()) << o.status.error_message();
  }
}

}  // namespace
}  // namespace gemma
