// Admission and limits: requests cancelled while queued leave at once and are never prefilled; --max_total_tokens
// bounds Score; the worker's step and context limits bound the router's steps and requests; --max_queued turns
// excess load into RESOURCE_EXHAUSTED.
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "router/router_test_fixture.h"

namespace gemma {
namespace {

TEST_F(RouterTest, RequestsCancelledWhileQueuedLeaveAtOnceAndAreNeverPrefilled) {
  const int metrics_port = testing::FreePort();
  OwnWorker worker = StartOwnWorker();
  RouterProcess router =
      // One token per step: the two long generations take turns, so they hold the batch for twice as long, and
      // nothing queued is ever admitted while they run.
      StartRouter({worker.port}, {"--max_batch_size=2", "--max_tokens_per_step=1",
                                   "--metrics_port=" + std::to_string(metrics_port)});
  ASSERT_GT(router.port, 0) << router.process->Err();
  const std::string group = "{group=\"own-group\"}";
  const std::string cancelled_total = "gemma_router_requests_total{code=\"CANCELLED\",endpoint=\"GenerateStream\",outcome=\"cancelled\",protocol=\"grpc\"}";
  auto metric = [&](const std::string& name) {
    return std::max(0.0, Sample(testing::HttpGet(metrics_port, "/metrics"), name));
  };
  const double prefilled_before = metric("gemma_router_prefill_tokens_total");
  const double cancelled_before = metric(cancelled_total);

  // Two long generations hold both places in the batch (480 tokens: about 2 s here, more than twice this test;
  // should they end first, the running check below fails rather than the test passing by luck).
  constexpr int kLongPrompt = 3, kLongTokens = 480;
  std::vector<std::unique_ptr<grpc::ClientContext>> long_ctx;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>>> long_streams;
  for (int i = 0; i < 2; ++i) {
    long_ctx.push_back(std::make_unique<grpc::ClientContext>());
    long_streams.push_back(router.stub->GenerateStream(long_ctx.back().get(), Ids({2, 300 + i, 400 + i}, kLongTokens)));
    v1::GenerateStreamResponse event;
    ASSERT_TRUE(long_streams.back()->Read(&event));  // running
  }

  // 50 streams queue behind them, each with a 20-token prompt of its own: one prefill would show in the counter.
  // 25 are cancelled by the client once queued; 25 more come with an 800 ms deadline.
  constexpr int kQueued = 50, kCancelled = 25;
  std::vector<std::unique_ptr<grpc::ClientContext>> ctx(kQueued);
  std::vector<std::future<grpc::Status>> queued;
  auto wait_for_depth = [&](double want, std::chrono::milliseconds at_most) {
    double depth = 0;
    for (auto until = std::chrono::steady_clock::now() + at_most;
         depth < want && std::chrono::steady_clock::now() < until;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      depth = metric("gemma_router_queue_depth" + group);
    }
    return depth;
  };
  for (int i = 0; i < kQueued; ++i) {
    ctx[i] = std::make_unique<grpc::ClientContext>();
    if (i >= kCancelled) ctx[i]->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(800));
    std::vector<int> prompt = {2};
    for (int j = 1; j < 20; ++j) prompt.push_back(1000 + 50 * i + j);
    queued.push_back(std::async(std::launch::async, [&router, c = ctx[i].get(), prompt] {
      auto reader = router.stub->GenerateStream(c, Ids(prompt, 8));
      v1::GenerateStreamResponse event;
      while (reader->Read(&event)) {
      }
      return reader->Finish();
    }));
    if (i + 1 == kCancelled) {
      ASSERT_EQ(wait_for_depth(kCancelled, std::chrono::seconds(2)), kCancelled) << "they should wait in the queue";
    }
  }
  // Those with deadlines may start expiring before the last is queued.
  EXPECT_GT(wait_for_depth(kQueued, std::chrono::milliseconds(600)), kCancelled);
  // The worker is paused while they end, so the long generations cannot finish and let the queue in first,
  // however fast the machine: the router must see every cancel by the step after the one it waits on.
  struct Paused {
    pid_t pid;
    explicit Paused(pid_t p) : pid(p) { ::kill(pid, SIGSTOP); }
    ~Paused() { Resume(); }
    void Resume() {
      if (pid > 0) ::kill(pid, SIGCONT);
      pid = -1;
    }
  } paused(worker.process->pid);
  for (int i = 0; i < kCancelled; ++i) ctx[i]->TryCancel();
  for (auto& q : queued) {
    const grpc::Status status = q.get();
    const grpc::StatusCode code = status.error_code();
    EXPECT_TRUE(code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::DEADLINE_EXCEEDED)
        << code << " " << status.error_message();
  }
  paused.Resume();
  // The router notices each within one step plus its 50 ms poll: the queue empties and all 50 are counted (the
  // bound leaves room for a loaded machine; a router that let them wait for their turn is caught below, where the
  // long generations must still be running).
  const auto ended = std::chrono::steady_clock::now();
  double cancelled = 0, depth = -1;
  while (std::chrono::steady_clock::now() - ended < std::chrono::seconds(10)) {
    depth = metric("gemma_router_queue_depth" + group);
    cancelled = metric(cancelled_total) - cancelled_before;
    if (depth == 0 && cancelled >= kQueued) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(depth, 0) << "cancelled requests still queued";
  EXPECT_EQ(cancelled, kQueued);
  EXPECT_LT(std::chrono::steady_clock::now() - ended, std::chrono::seconds(5));
  // Only the two long ones were prefilled, and only they hold KV blocks (16 positions a block).
  EXPECT_EQ(metric("gemma_router_prefill_tokens_total") - prefilled_before, 2 * kLongPrompt);
  // With one token a step, the older long generation decodes first; the other holds its place until then.
  EXPECT_GE(metric("gemma_router_running_sequences" + group), 1) << "the long ones must still be running";
  EXPECT_LE(metric("gemma_router_kv_blocks_used" + group), 2 * ((kLongPrompt + kLongTokens + 15) / 16));
  for (int i = 0; i < 2; ++i) {
    long_ctx[i]->TryCancel();
    v1::GenerateStreamResponse event;
    while (long_streams[i]->Read(&event)) {
    }
    long_streams[i]->Finish();
  }
}

TEST_F(RouterTest, ScoreRespectsMaxTotalTokens) {
  OwnWorker worker = StartOwnWorker();
  RouterProcess router = StartRouter({worker.port}, {"--max_total_tokens=16"});
  ASSERT_GT(router.port, 0) << router.process->Err();
  auto score = [&](int n) {
    v1::ScoreRequest req;
    req.mutable_input()->mutable_token_ids()->add_ids(2);
    for (int i = 1; i < n; ++i) req.mutable_input()->mutable_token_ids()->add_ids(100 + i);
    v1::ScoreResponse resp;
    grpc::ClientContext ctx;
    return router.stub->Score(&ctx, req, &resp);
  };
  EXPECT_TRUE(score(16).ok());
  const grpc::Status s = score(17);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("allowed"), std::string::npos) << s.error_message();
}

// A worker that takes small steps: the router's larger --max_tokens_per_step (512 by default) is clamped to the
// worker's, so a long prompt is prefilled in chunks the worker takes and gives the same tokens; and the worker's
// --max_model_len bounds requests like the model's context does.
TEST_F(RouterTest, StepsKeepWithinTheLimitsTheWorkerReports) {
  const int worker_metrics = testing::FreePort();
  OwnWorker worker = StartOwnWorker(GemmaTinyDir() + "/tiny-mqa",
                                    {"--max_tokens_per_step=8", "--max_model_len=48",
                                     "--metrics_port=" + std::to_string(worker_metrics)});
  RouterProcess router = StartRouter({worker.port});
  ASSERT_GT(router.port, 0) << router.process->Err();
  ASSERT_TRUE(router.WaitForHealthyGroups(1)) << router.process->Err();
  std::vector<int> prompt = {2};
  for (int i = 1; i < 40; ++i) prompt.push_back(100 + 7 * i);
  const auto generate = [](v1::Gemma::Stub& stub, const v1::GenerateRequest& req, v1::GenerateResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    return stub.Generate(&ctx, req, resp);
  };
  v1::GenerateResponse limited, unlimited;
  const grpc::Status s = generate(*router.stub, Ids(prompt, 8), &limited);
  ASSERT_TRUE(s.ok()) << s.error_message() << router.process->Err();
  ASSERT_TRUE(generate(*Client(), Ids(prompt, 8), &unlimited).ok());
  EXPECT_EQ(TokenIds(limited), TokenIds(unlimited));
  EXPECT_EQ(TokenIds(limited).size(), 8u);
  const std::string m = testing::HttpGet(worker_metrics, "/metrics");
  const double steps = Sample(m, "gemma_worker_step_tokens_count{rank=\"0\"}");
  EXPECT_GE(steps, 5 + 7) << "40 prompt tokens in chunks of at most 8, then 7 decodes:\n" << m;
  EXPECT_EQ(Sample(m, "gemma_worker_step_tokens_bucket{rank=\"0\",le=\"8\"}"), steps) << m;
  EXPECT_NE(router.process->Err().find("--max_tokens_per_step 512"), std::string::npos) << router.process->Err();

  v1::ModelInfo info;
  grpc::ClientContext ctx;
  ASSERT_TRUE(router.stub->GetModelInfo(&ctx, {}, &info).ok());
  EXPECT_EQ(info.max_context(), 48);
  v1::GenerateResponse resp;
  grpc::Status refused = generate(*router.stub, Ids(prompt, 9), &resp);  // 49 positions
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.error_message().find("exceeds the limit of 48"), std::string::npos) << refused.error_message();
  prompt.resize(48);
  refused = generate(*router.stub, Ids(prompt, 1), &resp);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.error_message().find("fewer than 48"), std::string::npos) << refused.error_message();
}

TEST_F(RouterTest, QueueLimitTurnsExcessIntoResourceExhausted) {
  const std::string port_file = ::testing::TempDir() + "/router_q_" + std::to_string(::getpid());
  std::remove(port_file.c_str());
  OwnWorker worker = StartOwnWorker();
  auto router = testing::Start(ROUTER_BINARY, {"--plaintext", "--workers=127.0.0.1:" + std::to_string(worker.port),
                                               "--port_file=" + port_file, "--max_queued=4", "--max_batch_size=1"});
  const int port = testing::WaitForPortFile(port_file, std::chrono::seconds(20));
  ASSERT_GT(port, 0) << router->Err();
  std::vector<std::future<std::pair<grpc::StatusCode, int>>> calls;
  // Every caller connects first and all send together: on a loaded machine, callers that trickle in one by one
  // could each find the queue drained, and none would be refused.
  std::promise<void> go;
  const std::shared_future<void> all_connected_go = go.get_future().share();
  std::atomic<int> connected{0};
  for (int i = 0; i < 20; ++i) {
    calls.push_back(std::async(std::launch::async, [port, all_connected_go, &connected] {
      auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
      channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(30));
      ++connected;
      all_connected_go.wait();
      auto stub = v1::Gemma::NewStub(channel);
      v1::GenerateRequest req = Ids({2, 3791, 323}, 64);
      v1::GenerateResponse resp;
      grpc::ClientContext ctx;
      const grpc::Status s = stub->Generate(&ctx, req, &resp);
      return std::make_pair(s.error_code(), resp.tokens_size());
    }));
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (connected < 20 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  go.set_value();
  int ok = 0, exhausted = 0;
  for (auto& c : calls) {
    const auto [code, tokens] = c.get();
    if (code == grpc::StatusCode::OK) {
      ++ok;
      EXPECT_EQ(tokens, 64);
    } else {
      EXPECT_EQ(code, grpc::StatusCode::RESOURCE_EXHAUSTED);
      ++exhausted;
    }
  }
  EXPECT_GE(ok, 5);
  EXPECT_GE(exhausted, 1);
  EXPECT_EQ(ok + exhausted, 20);
}

}  // namespace
}  // namespace gemma
