// Stopping without losing work: a router told to stop answers its queued requests UNAVAILABLE and exits; a worker
// told to stop while a request runs finishes the request, then exits.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <future>
#include <string>
#include <vector>

#include "router/router_test_fixture.h"

namespace gemma {
namespace {

TEST_F(RouterTest, StoppingAnswersQueuedRequestsUnavailableAndExits) {
  const int metrics_port = testing::FreePort();
  OwnWorker worker = StartOwnWorker();
  RouterProcess router =
      StartRouter({worker.port}, {"--max_batch_size=1", "--metrics_port=" + std::to_string(metrics_port)});
  ASSERT_GT(router.port, 0) << router.process->Err();
  // One stream runs at a time; the others wait in the queue (more work than a few seconds) when the router is
  // told to stop.
  constexpr int kStreams = 100;
  struct Ending {
    grpc::Status status;
    std::chrono::steady_clock::time_point at;
  };
  std::vector<std::future<Ending>> streams;
  for (int i = 0; i < kStreams; ++i) {
    streams.push_back(std::async(std::launch::async, [&router, i] {
      v1::GenerateRequest req = Ids({2, 100 + i, 200 + i}, 480);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      auto reader = router.stub->GenerateStream(&ctx, req);
      v1::GenerateStreamResponse event;
      while (reader->Read(&event)) {
      }
      const grpc::Status status = reader->Finish();
      return Ending{status, std::chrono::steady_clock::now()};
    }));
  }
  const std::string depth = "gemma_router_queue_depth{group=\"own-group\"}";
  double queued = 0;
  for (int i = 0; i < 400 && queued < 60; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    queued = Sample(testing::HttpGet(metrics_port, "/metrics"), depth);
  }
  ASSERT_GE(queued, 60);
  ::kill(router.process->pid, SIGTERM);
  const auto stop = std::chrono::steady_clock::now();
  int answered_at_once = 0;
  for (auto& s : streams) {
    const Ending e = s.get();  // none hangs
    const grpc::StatusCode code = e.status.error_code();
    EXPECT_TRUE(code == grpc::StatusCode::OK || code == grpc::StatusCode::UNAVAILABLE) << code;
    if (code != grpc::StatusCode::UNAVAILABLE) continue;
    // The router's own answer, not a connection torn down under the call.
    EXPECT_NE(e.status.error_message().find("shutting down"), std::string::npos) << e.status.error_message();
    // Well inside the drain timeout (10 s), with room for 99 client threads to wake on a loaded machine.
    answered_at_once += e.at - stop < std::chrono::seconds(5);
  }
  EXPECT_GE(answered_at_once, 55) << "queued requests are answered UNAVAILABLE when the router stops";
  EXPECT_EQ(router.process->WaitExit(std::chrono::seconds(15)), 0) << router.process->Err();
  EXPECT_LT(std::chrono::steady_clock::now() - stop, std::chrono::seconds(15));
}

// A worker group told to stop (SIGTERM, as Kubernetes does) while a request runs: the request completes in full
// (the same tokens as undisturbed), and only then does the worker exit, cleanly.
TEST_F(RouterTest, AWorkerStoppedDuringARequestFinishesItThenExits) {
  const std::string port_file = ::testing::TempDir() + "/drain_worker_" + std::to_string(::getpid());
  std::remove(port_file.c_str());
  auto worker = testing::Start(WORKER_BINARY, {"--model=" + GemmaTinyDir() + "/tiny-mqa", "--port_file=" + port_file,
                                               "--threads=1", "--kv_cache_mb=32", "--drain_timeout_ms=60000"});
  const int worker_port = testing::WaitForPortFile(port_file, std::chrono::seconds(30));
  ASSERT_GT(worker_port, 0) << worker->Err();
  RouterProcess router = StartRouter({worker_port});
  ASSERT_GT(router.port, 0) << router.process->Err();
  const v1::GenerateRequest req = Ids({2, 3791, 323}, 300);
  v1::GenerateResponse undisturbed;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(router.stub->Generate(&ctx, req, &undisturbed).ok());
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto reader = router.stub->GenerateStream(&ctx, req);
  v1::GenerateStreamResponse event;
  std::vector<int> ids;
  ASSERT_TRUE(reader->Read(&event));
  ids.push_back(event.token().token().id());
  ::kill(worker->pid, SIGTERM);
  while (reader->Read(&event)) {
    if (event.has_token()) ids.push_back(event.token().token().id());
  }
  const grpc::Status status = reader->Finish();
  const auto finished = std::chrono::steady_clock::now();
  ASSERT_TRUE(status.ok()) << status.error_message() << "\n" << worker->Err();
  EXPECT_EQ(ids, TokenIds(undisturbed));
  EXPECT_GT(ids.size(), 50u) << "the request ended too soon to have run across the signal";
  EXPECT_EQ(worker->WaitExit(std::chrono::seconds(15)), 0) << worker->Err();
  EXPECT_LT(std::chrono::steady_clock::now() - finished, std::chrono::seconds(5)) << "it waited for the drain timeout";
  EXPECT_NE(worker->Err().find("drained after"), std::string::npos) << worker->Err();
}

}  // namespace
}  // namespace gemma
