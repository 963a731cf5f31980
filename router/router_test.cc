// The router in front of a real worker, through a real gRPC client: reference tokens, streaming equal to unary,
// 64 concurrent streams equal to solo runs, scoring, tokenization, INVALID_ARGUMENT for bad requests, the prefix
// cache, cancellation, metrics, and shutdown. Several groups behind one router: router_groups_test.cc.
#include <grpcpp/grpcpp.h>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <fstream>
#include <map>
#include <set>
#include <future>
#include <sstream>
#include <thread>

#include "gemma/v1/gemma.grpc.pb.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/processes.h"
#include "tests/testdata.h"
#include "router/router_test_support.h"

namespace gemma {
namespace {

using testing::GemmaTinyDir;

class RouterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = ::testing::TempDir() + "/router_test_" + std::to_string(::getpid());
    std::remove((dir + ".worker").c_str());
    std::remove((dir + ".router").c_str());
    worker_ = testing::Start(WORKER_BINARY, {"--model=" + GemmaTinyDir() + "/tiny-mqa", "--port_file=" + dir + ".worker",
                                             "--threads=1", "--kv_cache_mb=64", "--group_name=router-test-group"})
                  .release();
    const int worker_port = testing::WaitForPortFile(dir + ".worker", std::chrono::seconds(20));
    ASSERT_GT(worker_port, 0) << worker_->Err();
    worker_port_ = worker_port;
    metrics_port_ = testing::FreePort();
    router_ = testing::Start(ROUTER_BINARY, {"--plaintext", "--workers=127.0.0.1:" + std::to_string(worker_port),
                                             "--port_file=" + dir + ".router", "--max_tokens_per_step=128",
                                             "--metrics_port=" + std::to_string(metrics_port_)})
                  .release();
    port_ = testing::WaitForPortFile(dir + ".router", std::chrono::seconds(20));
    ASSERT_GT(port_, 0) << router_->Err();
  }
  static void TearDownTestSuite() {
    if (::testing::UnitTest::GetInstance()->failed_test_count() > 0) {
      std::fprintf(stderr, "router log:\n%s\nworker log:\n%s\n", router_->Err().c_str(), worker_->Err().c_str());
    }
    delete router_;
    delete worker_;
  }
  std::unique_ptr<v1::Gemma::Stub> Client() {
    return v1::Gemma::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials()));
  }
  // A request refused with INVALID_ARGUMENT whose message holds `needle`.
  void ExpectInvalid(const v1::GenerateRequest& req, const std::string& needle) {
    v1::GenerateResponse resp;
    grpc::ClientContext ctx;
    const grpc::Status s = Client()->Generate(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << needle;
    EXPECT_NE(s.error_message().find(needle), std::string::npos) << s.error_message();
  }
  // Streams a request; returns the token ids and the concatenated text.
  std::pair<std::vector<int>, std::string> Stream(const v1::GenerateRequest& req, v1::FinalEvent* final_event) {
    grpc::ClientContext ctx;
    auto reader = Client()->GenerateStream(&ctx, req);
    v1::GenerateStreamResponse event;
    std::vector<int> ids;
    std::string text;
    while (reader->Read(&event)) {
      if (event.has_token()) {
        if (event.token().has_token()) ids.push_back(event.token().token().id());
        text += event.token().text_delta();
      } else if (final_event) {
        *final_event = event.final();
      }
    }
    const grpc::Status status = reader->Finish();
    EXPECT_TRUE(status.ok()) << status.error_code() << ": " << status.error_message();
    return {ids, text};
  }

  static testing::Process* worker_;
  static testing::Process* router_;
  static int port_, worker_port_, metrics_port_;
};

testing::Process* RouterTest::worker_ = nullptr;
testing::Process* RouterTest::router_ = nullptr;
int RouterTest::port_ = 0;
int RouterTest::worker_port_ = 0;
int RouterTest::metrics_port_ = 0;

TEST_F(RouterTest, CancelledStreamsFreeTheirKvBlocksAndAreCounted) {
  v1::GenerateRequest req;
  req.mutable_input()->set_text("A long story begins");
  req.mutable_parameters()->set_max_new_tokens(400);
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext ctx;
    auto reader = Client()->GenerateStream(&ctx, req);
    v1::GenerateStreamResponse event;
    ASSERT_TRUE(reader->Read(&event));  // running: it holds KV blocks
    ctx.TryCancel();
    while (reader->Read(&event)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  const std::string kv = "gemma_router_kv_blocks_used{group=\"router-test-group\"}";
  double used = -1, cancelled = -1;
  for (int i = 0; i < 100 && (used != 0 || cancelled < 3); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const std::string m = testing::HttpGet(metrics_port_, "/metrics");
    used = Sample(m, kv);
    cancelled = Sample(m, "gemma_router_requests_total{code=\"CANCELLED\",endpoint=\"GenerateStream\",outcome=\"cancelled\",protocol=\"grpc\"}");
  }
  EXPECT_EQ(used, 0) << "KV blocks still held after cancellation";
  EXPECT_GE(cancelled, 3);
  const std::string m = testing::HttpGet(metrics_port_, "/metrics");
  EXPECT_GE(Sample(m, "gemma_router_requests_finished_total{reason=\"cancelled\"}"), 3);
  for (const char* name : {"gemma_router_time_to_first_token_seconds_count", "gemma_router_inter_token_latency_seconds_count",
                           "gemma_router_request_duration_seconds_count", "gemma_router_queue_duration_seconds_count",
                           "gemma_router_queue_depth", "gemma_router_running_sequences", "gemma_router_kv_cache_usage_ratio",
                           "gemma_router_generated_tokens_total", "gemma_router_prompt_tokens_total",
                           "gemma_router_preemptions_total", "gemma_router_group_healthy"}) {
    EXPECT_NE(m.find(name), std::string::npos) << name;
  }
}

// Per request: how it ended, its prompt and generated tokens, its prefill time; per step: its tokens; per process:
// its build; groups labelled by their name, not their address.
TEST_F(RouterTest, MetricsCountFinishReasonsTokensPerRequestAndStepAndPrefillTime) {
  auto scrape = [&] { return testing::HttpGet(metrics_port_, "/metrics"); };
  const std::string before = scrape();
  auto delta = [&](const std::string& after, const std::string& name) {
    return std::max(0.0, Sample(after, name)) - std::max(0.0, Sample(before, name));
  };
  v1::GenerateResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(Client()->Generate(&ctx, Ids({2, 3791, 323, 4}, 5), &resp).ok());
  const std::string reason = resp.finish_reason() == v1::FINISH_REASON_EOS ? "eos" : "length";
  const double generated = resp.tokens_size();
  std::string m;
  // The request's metrics are recorded as it ends, just before it answers; the last step's may come a moment
  // after the answer (seen under load: one step short).
  for (int i = 0; i < 40; ++i) {
    m = scrape();
    if (delta(m, "gemma_router_requests_finished_total{reason=\"" + reason + "\"}") >= 1 &&
        delta(m, "gemma_router_step_tokens_count") >= generated) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  EXPECT_EQ(delta(m, "gemma_router_requests_finished_total{reason=\"" + reason + "\"}"), 1) << m;
  EXPECT_EQ(delta(m, "gemma_router_prompt_tokens_count"), 1);
  EXPECT_EQ(delta(m, "gemma_router_prompt_tokens_sum"), 4);
  EXPECT_EQ(delta(m, "gemma_router_generated_tokens_count"), 1);
  EXPECT_EQ(delta(m, "gemma_router_generated_tokens_sum"), generated);
  EXPECT_EQ(delta(m, "gemma_router_prefill_duration_seconds_count"), 1);
  EXPECT_GT(delta(m, "gemma_router_prefill_duration_seconds_sum"), 0);
  // A prefill step of 4 positions, then a step of one token for each further token.
  EXPECT_GE(delta(m, "gemma_router_step_tokens_count"), generated);
  EXPECT_GE(delta(m, "gemma_router_step_tokens_sum"), 4 + generated - 1);
  EXPECT_NE(m.find("gemma_build_info{protocol=\"5\",version=\""), std::string::npos);
  EXPECT_EQ(Sample(m, "gemma_router_group_healthy{group=\"router-test-group\"}"), 1) << m;
  EXPECT_EQ(m.find("gemma_router_group_healthy{group=\"127.0.0.1:"), std::string::npos);
}

TEST_F(RouterTest, ARepeatedPrefixIsServedFromTheCacheWithTheSameTokens) {
  // A prompt of 7 full blocks and 4 positions, found in no other test's cache.
  std::vector<int> prompt = {2};
  for (int i = 1; i < 116; ++i) prompt.push_back(1000 + (i * 37) % 3000);
  auto metric = [&](const std::string& name) { return Sample(testing::HttpGet(metrics_port_, "/metrics"), name); };
  // Metrics are published after each step, a moment after the reply: poll until settled.
  auto settled = [&](const std::string& name, double expected) {
    double v = metric(name);
    for (int i = 0; i < 40 && v != expected; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      v = metric(name);
    }
    return v;
  };
  auto generate = [&](const std::vector<int>& ids) {
    grpc::ClientContext ctx;
    v1::GenerateResponse resp;
    EXPECT_TRUE(Client()->Generate(&ctx, Ids(ids, 8), &resp).ok());
    return TokenIds(resp);
  };
  const auto cold = generate(prompt);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const double hits = metric("gemma_router_prefix_cache_hits_total");
  const double prefilled = metric("gemma_router_prefill_tokens_total");
  EXPECT_EQ(generate(prompt), cold);
  // The same 7 blocks (112 positions) are reused; only the last 4 prompt positions are computed again.
  EXPECT_EQ(settled("gemma_router_prefix_cache_hits_total", hits + 112), hits + 112);
  EXPECT_EQ(settled("gemma_router_prefill_tokens_total", prefilled + 4), prefilled + 4);
  EXPECT_GT(metric("gemma_router_prefix_cache_blocks{group=\"router-test-group\"}"), 0);
  // A prompt that shares the first blocks and then departs reuses only those.
  auto other = prompt;
  other[40] = 7;  // in the third block
  const double before = metric("gemma_router_prefix_cache_hits_total");
  generate(other);
  EXPECT_EQ(settled("gemma_router_prefix_cache_hits_total", before + 32), before + 32);
}

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
    answered_at_once += e.at - stop < std::chrono::seconds(2);
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

// The worker keeps a penalized sequence's history: a run that starts from the prefix cache (its first row brings
// the history) gives the tokens of a cold run, and the penalties do change them.
TEST_F(RouterTest, PenalizedGenerationIsTheSameColdAndFromThePrefixCache) {
  std::vector<int> prompt = {2};
  for (int i = 1; i < 40; ++i) prompt.push_back(2000 + (i * 53) % 2000);
  v1::GenerateRequest req = Ids(prompt, 48);
  auto generate = [&](const v1::GenerateRequest& r) {
    v1::GenerateResponse resp;
    grpc::ClientContext ctx;
    EXPECT_TRUE(Client()->Generate(&ctx, r, &resp).ok());
    return TokenIds(resp);
  };
  const std::vector<int> plain = generate(req);
  req.mutable_parameters()->set_repetition_penalty(1.6f);
  req.mutable_parameters()->set_presence_penalty(0.4f);
  req.mutable_parameters()->set_frequency_penalty(0.6f);
  const std::vector<int> cold = generate(req);
  EXPECT_NE(cold, plain);
  EXPECT_EQ(generate(req), cold);
}

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
  // The router notices each within one step plus its 50 ms poll: the queue empties and all 50 are counted.
  const auto ended = std::chrono::steady_clock::now();
  double cancelled = 0, depth = -1;
  for (int i = 0; i < 80; ++i) {
    depth = metric("gemma_router_queue_depth" + group);
    cancelled = metric(cancelled_total) - cancelled_before;
    if (depth == 0 && cancelled >= kQueued) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(depth, 0) << "cancelled requests still queued";
  EXPECT_EQ(cancelled, kQueued);
  EXPECT_LT(std::chrono::steady_clock::now() - ended, std::chrono::milliseconds(800));
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

TEST_F(RouterTest, StreamSendsOneTokenEventPerTokenWhenTextWasHeldBack) {
  v1::GenerateRequest req = Ids({2, 3791, 323}, 16);
  v1::GenerateResponse unary;
  grpc::ClientContext ctx;
  ASSERT_TRUE(Client()->Generate(&ctx, req, &unary).ok());
  ASSERT_FALSE(unary.text().empty());
  // A stop sequence that starts with the text's last character: that character is held back to the end.
  size_t last = unary.text().size() - 1;
  while (last > 0 && (static_cast<unsigned char>(unary.text()[last]) & 0xc0) == 0x80) --last;
  req.mutable_parameters()->add_stop_sequences(unary.text().substr(last) + "QQQ");
  grpc::ClientContext sctx;
  auto reader = Client()->GenerateStream(&sctx, req);
  v1::GenerateStreamResponse event;
  int token_events = 0, other_events = 0, finals = 0;
  std::string text;
  while (reader->Read(&event)) {
    if (event.has_final()) {
      ++finals;
    } else if (event.token().has_token()) {
      ++token_events;
    } else {
      ++other_events;
    }
    text += event.token().text_delta();
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(token_events, 16);
  EXPECT_EQ(other_events, 0) << "an event without a token";
  EXPECT_EQ(finals, 1);
  EXPECT_EQ(text, unary.text());
}

TEST_F(RouterTest, ScoreReturnsTheTopAlternativesOfEachPosition) {
  const auto scores = nlohmann::json::parse(testing::ReadFile(GemmaTinyDir() + "/reference/tiny-mqa/scores.json"));
  const auto ids = scores["prompts"][0]["ids"].get<std::vector<int>>();
  v1::ScoreRequest req;
  for (int id : ids) req.mutable_input()->mutable_token_ids()->add_ids(id);
  req.set_top_logprobs(3);
  v1::ScoreResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(Client()->Score(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.logprobs_size(), static_cast<int>(ids.size()) - 1);
  ASSERT_EQ(resp.top_logprobs_size(), resp.logprobs_size());
  for (int t = 0; t < resp.top_logprobs_size(); ++t) {
    const auto& alts = resp.top_logprobs(t).alternatives();
    ASSERT_EQ(alts.size(), 3) << t;
    EXPECT_GE(alts[0].logprob(), alts[1].logprob());
    EXPECT_GE(alts[1].logprob(), alts[2].logprob());
    EXPECT_GE(alts[0].logprob() + 1e-5, resp.logprobs(t)) << "the most likely token is at least as likely as the actual one";
    for (const auto& alt : alts) {
      if (alt.id() == ids[t + 1]) EXPECT_NEAR(alt.logprob(), resp.logprobs(t), 1e-5);
    }
  }
}

// KerasNLP's scoring modes: target_ids score each position's logits (the last one's too) against a given token,
// and SCORING_MODE_LOSS adds the cross-entropies and their sum. With the next tokens as targets the log-probs are
// plain Score's, one position longer.
TEST_F(RouterTest, ScoreAgainstGivenTargetsWithLosses) {
  const auto scores = nlohmann::json::parse(testing::ReadFile(GemmaTinyDir() + "/reference/tiny-mqa/scores.json"));
  const auto ids = scores["prompts"][0]["ids"].get<std::vector<int>>();
  v1::ScoreRequest plain;
  for (int id : ids) plain.mutable_input()->mutable_token_ids()->add_ids(id);
  v1::ScoreResponse base;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(Client()->Score(&ctx, plain, &base).ok());
  }
  EXPECT_EQ(base.losses_size(), 0) << "losses only in SCORING_MODE_LOSS";
  v1::ScoreRequest req = plain;
  for (size_t t = 0; t + 1 < ids.size(); ++t) req.add_target_ids(ids[t + 1]);
  req.add_target_ids(17);   // the last position, which plain Score cannot score
  req.set_target_ids(2, -1);  // not scored
  req.set_mode(v1::SCORING_MODE_LOSS);
  v1::ScoreResponse resp;
  {
    grpc::ClientContext ctx;
    const grpc::Status s = Client()->Score(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  ASSERT_EQ(resp.logprobs_size(), static_cast<int>(ids.size()));
  ASSERT_EQ(resp.losses_size(), resp.logprobs_size());
  double sum = 0;
  for (int t = 0; t < resp.logprobs_size(); ++t) {
    if (t == 2) {
      EXPECT_EQ(resp.logprobs(t), 0.0f);
    } else if (t + 1 < static_cast<int>(ids.size())) {
      EXPECT_NEAR(resp.logprobs(t), base.logprobs(t), 1e-5) << t;
    } else {
      EXPECT_LT(resp.logprobs(t), 0.0f) << "the last position is scored against its target";
    }
    EXPECT_FLOAT_EQ(resp.losses(t), -resp.logprobs(t)) << t;
    sum += resp.losses(t);
  }
  EXPECT_NEAR(resp.loss_sum(), sum, 1e-4);
  // Bad targets: the wrong count, a token outside the vocabulary, an unknown mode.
  auto refused = [&](v1::ScoreRequest bad, const std::string& expect) {
    v1::ScoreResponse r;
    grpc::ClientContext ctx;
    const grpc::Status s = Client()->Score(&ctx, bad, &r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << expect;
    EXPECT_NE(s.error_message().find(expect), std::string::npos) << s.error_message();
  };
  v1::ScoreRequest short_targets = req;
  short_targets.mutable_target_ids()->RemoveLast();
  refused(short_targets, "one per token");
  v1::ScoreRequest outside = req;
  outside.set_target_ids(0, 1 << 20);
  refused(outside, "outside the vocabulary");
  v1::ScoreRequest mode = plain;
  mode.set_mode(static_cast<v1::ScoringMode>(7));
  refused(mode, "SCORING_MODE_LOSS");
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
  for (int i = 0; i < 20; ++i) {
    calls.push_back(std::async(std::launch::async, [port] {
      auto stub = v1::Gemma::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
      v1::GenerateRequest req = Ids({2, 3791, 323}, 64);
      v1::GenerateResponse resp;
      grpc::ClientContext ctx;
      const grpc::Status s = stub->Generate(&ctx, req, &resp);
      return std::make_pair(s.error_code(), resp.tokens_size());
    }));
  }
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

TEST_F(RouterTest, GreedyGenerationMatchesReference) {
  const auto gens = nlohmann::json::parse(testing::ReadFile(GemmaTinyDir() + "/reference/tiny-mqa/generations.json"));
  for (const auto& g : gens["results"]) {
    v1::GenerateResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(Client()->Generate(&ctx, Ids(g["prompt_ids"], 32), &resp).ok());
    const auto ref = g["generated_ids"].get<std::vector<int>>();
    const auto got = TokenIds(resp);
    ASSERT_EQ(got.size(), 32u);
    const size_t compare = g["first_step_with_margin_below_1e-3"].is_null() ? 32 : g["first_step_with_margin_below_1e-3"].get<size_t>();
    EXPECT_TRUE(std::equal(ref.begin(), ref.begin() + compare, got.begin())) << g["prompt"];
    EXPECT_EQ(resp.finish_reason(), v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(resp.usage().generated_tokens(), 32);
  }
}

TEST_F(RouterTest, StreamingEqualsUnaryAndEndsWithFinal) {
  v1::GenerateRequest req;
  req.mutable_input()->set_text("In the quiet harbor town");
  req.mutable_parameters()->set_max_new_tokens(24);
  v1::GenerateResponse unary;
  grpc::ClientContext ctx;
  ASSERT_TRUE(Client()->Generate(&ctx, req, &unary).ok());
  v1::FinalEvent final_event;
  const auto [ids, text] = Stream(req, &final_event);
  EXPECT_EQ(ids, TokenIds(unary));
  EXPECT_EQ(text, unary.text());
  EXPECT_EQ(final_event.finish_reason(), unary.finish_reason());
  EXPECT_EQ(final_event.usage().generated_tokens(), 24);
}

TEST_F(RouterTest, ConcurrentStreamsEachEqualTheirSoloRun) {
  std::vector<v1::GenerateRequest> reqs;
  for (int i = 0; i < 64; ++i) {
    std::vector<int> prompt = {2};
    for (int k = 0; k < 3 + (i * 7) % 40; ++k) prompt.push_back(100 + (i * 31 + k * 17) % 3900);
    reqs.push_back(Ids(prompt, 4 + i % 12));
  }
  std::vector<std::vector<int>> solo;
  for (const auto& r : reqs) solo.push_back(Stream(r, nullptr).first);
  std::vector<std::future<std::vector<int>>> futures;
  for (const auto& r : reqs) futures.push_back(std::async(std::launch::async, [&, r] { return Stream(r, nullptr).first; }));
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(futures[i].get(), solo[i]) << i;
}

TEST_F(RouterTest, ScoreMatchesReference) {
  const auto scores = nlohmann::json::parse(testing::ReadFile(GemmaTinyDir() + "/reference/tiny-mqa/scores.json"));
  const auto& p = scores["prompts"][2];  // rand200: prefilled in chunks of the step budget
  v1::ScoreRequest req;
  for (int id : p["ids"]) req.mutable_input()->mutable_token_ids()->add_ids(id);
  v1::ScoreResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(Client()->Score(&ctx, req, &resp).ok());
  const auto want = p["token_logprobs"].get<std::vector<double>>();
  ASSERT_EQ(resp.logprobs_size(), static_cast<int>(want.size()));
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(resp.logprobs(i), want[i], 1e-4) << i;
}

TEST_F(RouterTest, ScoreListsAndLogitsModeMatchTheReferenceLogits) {
  v1::ScoreRequest req;
  std::vector<std::vector<float>> logits;
  std::vector<std::vector<int>> ids;
  for (const char* name : {"fox", "rand200"}) {  // rand200: prefilled in chunks of the step budget
    const auto side = nlohmann::json::parse(
        testing::ReadFile(GemmaTinyDir() + "/reference/tiny-mqa/logits_" + std::string(name) + ".json"));
    ids.push_back(side["ids"].get<std::vector<int>>());
    auto* input = req.add_inputs()->mutable_token_ids();
    for (int id : ids.back()) input->add_ids(id);
    const std::string bin = testing::ReadFile(GemmaTinyDir() + "/reference/tiny-mqa/logits_" + std::string(name) + ".f32.bin");
    logits.emplace_back(bin.size() / sizeof(float));
    std::memcpy(logits.back().data(), bin.data(), bin.size());
  }
  req.set_mode(v1::SCORING_MODE_LOGITS);
  req.set_top_logits(-1);
  v1::ScoreResponse whole;
  grpc::ClientContext c1;
  ASSERT_TRUE(Client()->Score(&c1, req, &whole).ok());
  ASSERT_EQ(whole.results_size(), 2);
  EXPECT_EQ(whole.logprobs_size(), 0);
  for (int k = 0; k < 2; ++k) {
    const v1::ScoreResponse& r = whole.results(k);
    const int rows = static_cast<int>(ids[k].size()) - 1;
    ASSERT_EQ(r.logits_shape_size(), 2);
    EXPECT_EQ(r.logits_shape(0), rows);
    EXPECT_EQ(r.logits_shape(1), 4096);
    ASSERT_EQ(r.logits_data().size(), static_cast<size_t>(rows) * 4096 * sizeof(float));
    std::vector<float> got(static_cast<size_t>(rows) * 4096);
    std::memcpy(got.data(), r.logits_data().data(), r.logits_data().size());
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(double{got[i]} - logits[k][i]));
    EXPECT_LT(worst, 1e-4) << "input " << k;
    EXPECT_EQ(r.logprobs_size(), rows);
  }
  // The largest logits: the reference's, largest first.
  req.set_top_logits(5);
  v1::ScoreResponse top;
  grpc::ClientContext c2;
  ASSERT_TRUE(Client()->Score(&c2, req, &top).ok());
  ASSERT_EQ(top.results_size(), 2);
  for (int k = 0; k < 2; ++k) {
    const v1::ScoreResponse& r = top.results(k);
    ASSERT_EQ(r.top_logits_size(), static_cast<int>(ids[k].size()) - 1);
    EXPECT_TRUE(r.logits_data().empty());
    for (int t = 0; t < r.top_logits_size(); ++t) {
      const float* row = logits[k].data() + static_cast<size_t>(t) * 4096;
      std::vector<int> order(4096);
      for (int v = 0; v < 4096; ++v) order[v] = v;
      std::partial_sort(order.begin(), order.begin() + 5, order.end(), [&](int a, int b) { return row[a] > row[b]; });
      ASSERT_EQ(r.top_logits(t).alternatives_size(), 5);
      for (int j = 0; j < 5; ++j) {
        EXPECT_NEAR(r.top_logits(t).alternatives(j).logit(), row[order[j]], 1e-4) << k << " " << t << " " << j;
      }
      EXPECT_EQ(r.top_logits(t).alternatives(0).id(), order[0]);
    }
  }
}

TEST_F(RouterTest, BadScoreListsAndLogitsAreRefusedNamingTheField) {
  v1::ScoreRequest base;
  for (int id : {2, 651, 1320}) base.mutable_input()->mutable_token_ids()->add_ids(id);
  v1::ScoreRequest no_k = base;
  no_k.set_mode(v1::SCORING_MODE_LOGITS);
  v1::ScoreRequest wide = no_k;
  wide.set_top_logits(257);
  v1::ScoreRequest k_without_mode = base;
  k_without_mode.set_top_logits(3);
  v1::ScoreRequest both = base;
  *both.add_inputs() = base.input();
  v1::ScoreRequest targets;
  *targets.add_inputs() = base.input();
  for (int t : {651, 1320, -1}) targets.add_target_ids(t);
  v1::ScoreRequest bad_second;
  *bad_second.add_inputs() = base.input();
  bad_second.add_inputs()->mutable_token_ids()->add_ids(2);
  for (const auto& [req, needle] : std::vector<std::pair<v1::ScoreRequest, std::string>>{
           {no_k, "top_logits 0 is out of range; allowed: 1..256, or -1 for whole rows"},
           {wide, "top_logits 257 is out of range"},
           {k_without_mode, "top_logits 3 needs mode SCORING_MODE_LOGITS"},
           {both, "input and inputs are both set"},
           {targets, "target_ids apply to `input` alone"},
           {bad_second, "inputs[1]: the input is 1 tokens"}}) {
    v1::ScoreResponse resp;
    grpc::ClientContext ctx;
    const grpc::Status s = Client()->Score(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << needle;
    EXPECT_NE(s.error_message().find(needle), std::string::npos) << s.error_message();
  }
  // Whole rows of two 200-token inputs pass the 4 MiB answer: RESOURCE_EXHAUSTED naming the cap.
  const auto scores = nlohmann::json::parse(testing::ReadFile(GemmaTinyDir() + "/reference/tiny-mqa/scores.json"));
  v1::ScoreRequest big;
  for (int k = 0; k < 2; ++k) {
    auto* input = big.add_inputs()->mutable_token_ids();
    for (int id : scores["prompts"][2]["ids"]) input->add_ids(id);
  }
  big.set_mode(v1::SCORING_MODE_LOGITS);
  big.set_top_logits(-1);
  v1::ScoreResponse resp;
  grpc::ClientContext ctx;
  const grpc::Status s = Client()->Score(&ctx, big, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_NE(s.error_message().find("--max_message_bytes"), std::string::npos) << s.error_message();
}

TEST_F(RouterTest, TokenizeDetokenizeAndModelInfo) {
  v1::TokenizeRequest treq;
  treq.set_text("Hello");
  treq.set_add_bos(true);
  v1::TokenizeResponse tresp;
  grpc::ClientContext c1;
  ASSERT_TRUE(Client()->Tokenize(&c1, treq, &tresp).ok());
  EXPECT_EQ(std::vector<int>(tresp.ids().begin(), tresp.ids().end()), (std::vector<int>{2, 3791, 323}));
  v1::DetokenizeRequest dreq;
  dreq.add_ids(3791);
  dreq.add_ids(323);
  v1::DetokenizeResponse dresp;
  grpc::ClientContext c2;
  ASSERT_TRUE(Client()->Detokenize(&c2, dreq, &dresp).ok());
  EXPECT_EQ(dresp.text(), "Hello");
  v1::ModelInfo info;
  grpc::ClientContext c3;
  ASSERT_TRUE(Client()->GetModelInfo(&c3, {}, &info).ok());
  EXPECT_EQ(info.vocab_size(), 4096);
  EXPECT_EQ(info.healthy_groups(), 1);
}

TEST_F(RouterTest, BeamSearchAnswersEveryBeamBestFirstAndOneBeamIsGreedy) {
  v1::GenerateRequest greedy = Ids({2, 651, 1320, 826, 2534}, 8);
  v1::GenerateResponse want;
  grpc::ClientContext c0;
  ASSERT_TRUE(Client()->Generate(&c0, greedy, &want).ok());

  v1::GenerateRequest one = greedy;
  one.mutable_parameters()->set_num_beams(1);
  one.mutable_parameters()->set_early_stopping(true);
  v1::GenerateResponse got;
  grpc::ClientContext c1;
  ASSERT_TRUE(Client()->Generate(&c1, one, &got).ok());
  ASSERT_EQ(got.tokens_size(), want.tokens_size());
  for (int i = 0; i < want.tokens_size(); ++i) EXPECT_EQ(got.tokens(i).id(), want.tokens(i).id()) << i;
  EXPECT_EQ(got.text(), want.text());
  ASSERT_EQ(got.completions_size(), 1);

  v1::GenerateRequest three = greedy;
  three.mutable_parameters()->set_num_beams(3);
  three.mutable_parameters()->set_length_penalty(0.5f);
  three.mutable_parameters()->set_logprobs(true);
  v1::GenerateResponse beams;
  grpc::ClientContext c2;
  ASSERT_TRUE(Client()->Generate(&c2, three, &beams).ok());
  ASSERT_EQ(beams.completions_size(), 3);
  for (int b = 0; b < 3; ++b) {
    const v1::Completion& c = beams.completions(b);
    EXPECT_EQ(c.index(), b);
    double sum = 0;
    for (const auto& t : c.tokens()) sum += t.logprob();
    EXPECT_NEAR(c.sum_logprob(), sum, 1e-4);
    EXPECT_NEAR(c.score(), c.sum_logprob() / std::pow(c.tokens_size(), 0.5), 1e-6);
    EXPECT_EQ(c.usage().generated_tokens(), c.tokens_size());
    if (b > 0) EXPECT_GE(beams.completions(b - 1).score(), c.score());
  }
  // The top-level answer is the best beam's (router_beam_stream_test streams every beam).
  ASSERT_EQ(beams.tokens_size(), beams.completions(0).tokens_size());
  for (int i = 0; i < beams.tokens_size(); ++i) EXPECT_EQ(beams.tokens(i).id(), beams.completions(0).tokens(i).id());
  EXPECT_EQ(beams.text(), beams.completions(0).text());
  EXPECT_EQ(beams.finish_reason(), beams.completions(0).finish_reason());
}

TEST_F(RouterTest, SeveralInputsAndSamplesAnswerInOrderAsTheirSoloRuns) {
  v1::GenerateRequest req;
  req.add_inputs()->set_text("The quick brown fox");
  auto* ids = req.add_inputs()->mutable_token_ids();
  for (int id : {2, 651, 1320, 826}) ids->add_ids(id);
  auto* p = req.mutable_parameters();
  p->set_max_new_tokens(6);
  p->set_temperature(0.9f);
  p->set_seed(41);
  p->set_n(3);
  v1::GenerateResponse all;
  grpc::ClientContext ctx;
  ASSERT_TRUE(Client()->Generate(&ctx, req, &all).ok());
  ASSERT_EQ(all.completions_size(), 6);
  std::set<std::vector<int>> distinct;
  for (int k = 0; k < 6; ++k) {
    const v1::Completion& c = all.completions(k);
    EXPECT_EQ(c.input_index(), k / 3);
    EXPECT_EQ(c.index(), k % 3);
    EXPECT_EQ(c.seed(), 41u + k % 3);
    // The same input and seed alone.
    v1::GenerateRequest solo;
    *solo.mutable_input() = req.inputs(k / 3);
    *solo.mutable_parameters() = req.parameters();
    solo.mutable_parameters()->set_n(0);
    solo.mutable_parameters()->set_seed(41 + k % 3);
    v1::GenerateResponse want;
    grpc::ClientContext c1;
    ASSERT_TRUE(Client()->Generate(&c1, solo, &want).ok());
    std::vector<int> got_ids, want_ids;
    for (const auto& t : c.tokens()) got_ids.push_back(t.id());
    for (const auto& t : want.tokens()) want_ids.push_back(t.id());
    EXPECT_EQ(got_ids, want_ids) << "completion " << k;
    EXPECT_EQ(c.text(), want.text());
    EXPECT_EQ(c.finish_reason(), want.finish_reason());
    distinct.insert(got_ids);
  }
  EXPECT_GT(distinct.size(), 3u);
  EXPECT_EQ(all.text(), all.completions(0).text());

  // Streamed: every event tagged with its output, one final event each, the same tokens.
  grpc::ClientContext sctx;
  auto reader = Client()->GenerateStream(&sctx, req);
  v1::GenerateStreamResponse event;
  std::map<std::pair<int, int>, std::vector<int>> streamed;
  std::map<std::pair<int, int>, std::string> texts;
  int finals = 0;
  while (reader->Read(&event)) {
    if (event.has_token()) {
      const auto key = std::make_pair(event.token().input_index(), event.token().index());
      streamed[key].push_back(event.token().token().id());
      texts[key] += event.token().text_delta();
    } else {
      ++finals;
      const auto key = std::make_pair(event.final().input_index(), event.final().index());
      EXPECT_EQ(event.final().usage().generated_tokens(), static_cast<int>(streamed[key].size()));
    }
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(finals, 6);
  for (int k = 0; k < 6; ++k) {
    std::vector<int> ids;
    for (const auto& t : all.completions(k).tokens()) ids.push_back(t.id());
    const auto key = std::make_pair(k / 3, k % 3);
    EXPECT_EQ(streamed[key], ids) << k;
    EXPECT_EQ(texts[key], all.completions(k).text()) << k;
  }
}

TEST_F(RouterTest, BadInputListsAreInvalidArgumentNamingTheInput) {
  v1::GenerateRequest both = Ids({2, 651}, 4);
  both.add_inputs()->set_text("x");
  v1::GenerateRequest many;
  for (int i = 0; i < 65; ++i) many.add_inputs()->set_text("x");
  v1::GenerateRequest outputs;
  for (int i = 0; i < 10; ++i) outputs.add_inputs()->set_text("x");
  outputs.mutable_parameters()->set_n(13);
  v1::GenerateRequest bad_second;
  bad_second.add_inputs()->set_text("fine");
  bad_second.add_inputs()->mutable_token_ids()->add_ids(9999);
  for (const auto& [req, needle] : std::vector<std::pair<v1::GenerateRequest, std::string>>{
           {both, "input and inputs are both set; allowed: one of them"},
           {many, "inputs has 65 entries; allowed: 1..64"},
           {outputs, "10 inputs x n 13 = 130 outputs; allowed: at most 128"},
           {bad_second, "inputs[1]: input.token_ids[0] = 9999 is outside the vocabulary"}}) {
    ExpectInvalid(req, needle);
  }
}

TEST_F(RouterTest, BeamParametersOutOfRangeAreInvalidArgumentNamingTheField) {
  const std::vector<std::pair<std::function<void(v1::GenerationParameters*)>, std::string>> cases = {
      {[](auto* p) { p->set_num_beams(11); }, "num_beams 11 is out of range; allowed: 0 (no beam search) to 10"},
      {[](auto* p) { p->set_num_beams(-2); }, "num_beams -2 is out of range"},
      {[](auto* p) { p->set_num_beams(2); p->set_length_penalty(10.5f); }, "length_penalty 10.5 is out of range; allowed: [-10, 10]"},
      {[](auto* p) { p->set_early_stopping(true); }, "allowed: with num_beams 1..10"},
      {[](auto* p) { p->set_num_beams(2); p->set_temperature(0.8f); }, "num_beams 2 cannot be combined with temperature"},
      {[](auto* p) { p->set_num_beams(2); p->add_stop_sequences("x"); }, "cannot be combined with stop_sequences"},
      {[](auto* p) { p->set_num_beams(2); p->set_n(2); }, "cannot be combined with n"},
      {[](auto* p) { p->set_n(129); }, "n 129 is out of range; allowed: 0..128"},
  };
  for (const auto& [set, needle] : cases) {
    v1::GenerateRequest req = Ids({2, 651}, 4);
    set(req.mutable_parameters());
    ExpectInvalid(req, needle);
  }
}

TEST_F(RouterTest, BadRequestsAreInvalidArgument) {
  std::vector<v1::GenerateRequest> bad(5);
  bad[0].mutable_input()->set_text("");
  bad[1].mutable_input()->set_text("x");
  bad[1].mutable_parameters()->set_temperature(-1);
  bad[2].mutable_input()->set_text("x");
  bad[2].mutable_parameters()->set_max_new_tokens(600);  // past the 512 context
  bad[3].mutable_input()->mutable_token_ids()->add_ids(5000);
  auto* m = bad[4].mutable_input()->mutable_chat()->add_messages();
  m->set_role("robot");
  for (const auto& req : bad) {
    v1::GenerateResponse resp;
    grpc::ClientContext ctx;
    const grpc::Status s = Client()->Generate(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_NE(s.error_message().find("allowed"), std::string::npos) << s.error_message();
  }
}

}  // namespace
}  // namespace gemma
