// gemma-worker processes on loopback, driven by a real gRPC client: model info, health, greedy steps against the
// reference at TP 1 and TP 2, a killed rank, a restarted group, and bad flags.
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <future>
#include <thread>

#include "gemma/worker/v1/worker.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/processes.h"
#include "tests/testdata.h"

namespace gemma {
namespace {

using worker::v1::StepRequest;
using worker::v1::StepResponse;

using testing::FreePort;
using Proc = testing::Process;

std::unique_ptr<Proc> StartWorker(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
  return testing::Start(WORKER_BINARY, args, env);
}

// A group of `world` ranks on loopback; returns rank 0's Worker API port (0 on failure).
struct Group {
  std::vector<std::unique_ptr<Proc>> ranks;
  int port = 0;
};

Group StartGroup(const std::string& model, int world, int timeout_ms = 3000, const std::vector<std::string>& extra = {}) {
  Group g;
  const std::string port_file = ::testing::TempDir() + "/port_" + std::to_string(::getpid()) + "_" + std::to_string(FreePort());
  std::remove(port_file.c_str());
  const std::string peer = std::to_string(FreePort());
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> args = {"--model=" + model, "--rank=" + std::to_string(r),
                                     "--world_size=" + std::to_string(world), "--peer_port=" + peer,
                                     "--leader=127.0.0.1:" + peer, "--port_file=" + port_file,
                                     "--timeout_ms=" + std::to_string(timeout_ms), "--threads=1", "--kv_cache_mb=16"};
    args.insert(args.end(), extra.begin(), extra.end());
    g.ranks.push_back(StartWorker(args));
  }
  for (int i = 0; i < 300 && g.port == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::ifstream in(port_file);
    in >> g.port;
    if (!in) g.port = 0;
  }
  return g;
}

// The value of the first sample of `metric` (its full name with labels, as exported), or -1.
double Sample(const std::string& metrics, const std::string& metric) {
  const size_t at = metrics.find("\n" + metric + " ");
  if (at == std::string::npos) return -1;
  return std::stod(metrics.substr(at + 2 + metric.size()));
}

// Scrapes /metrics on `port` until `ready` holds for the text (a follower records a step after rank 0 has answered
// it), up to 10 s; the last text scraped.
template <typename Ready>
std::string ScrapeUntil(int port, Ready ready) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  std::string text = testing::HttpGet(port, "/metrics");
  while (!ready(text) && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    text = testing::HttpGet(port, "/metrics");
  }
  return text;
}

// The group's health as rank 0 reports it (grpc.health.v1, service gemma.worker.v1.Worker).
grpc::Status CheckHealth(int port, grpc::health::v1::HealthCheckResponse* response) {
  auto health = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("gemma.worker.v1.Worker");
  grpc::ClientContext ctx;
  return health->Check(&ctx, request, response);
}

std::unique_ptr<worker::v1::Worker::Stub> Client(int port) {
  return worker::v1::Worker::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
}

// The group's lease for this test (renewed on each call: one holder, one epoch), as a router takes it before
// it sends a step.
uint64_t Lease(worker::v1::Worker::Stub& stub, const std::string& router = "worker-test", int ttl_ms = 60000) {
  worker::v1::LeaseRequest req;
  req.set_router_id(router);
  req.set_protocol_version(worker::v1::PROTOCOL_VERSION_CURRENT);
  req.set_ttl_ms(ttl_ms);
  worker::v1::LeaseState state;
  grpc::ClientContext ctx;
  // A failed group refuses leases (UNAVAILABLE); its steps then say so themselves.
  if (!stub.AcquireLease(&ctx, req, &state).ok()) return 0;
  EXPECT_TRUE(state.granted()) << state.DebugString();
  return state.epoch();
}

// Greedy generation through Step calls: one prefill step, then one step per token.
grpc::Status Greedy(worker::v1::Worker::Stub& stub, const std::vector<int>& prompt, int n, std::vector<int>* out) {
  std::vector<int> tokens = prompt;
  for (int i = 0; i < n; ++i) {
    StepRequest req;
    auto* s = req.add_sequences();
    s->set_sequence_id(7);
    const int start = i == 0 ? 0 : static_cast<int>(tokens.size()) - 1;
    for (size_t t = start; t < tokens.size(); ++t) s->add_tokens(tokens[t]);
    s->set_start_pos(start);
    for (int b = 0; b < 8; ++b) s->add_block_table(b);
    s->set_sample(true);
    StepResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    req.set_epoch(Lease(stub));
    grpc::Status st = stub.Step(&ctx, req, &resp);
    if (!st.ok()) return st;
    tokens.push_back(resp.results(0).token());
    out->push_back(resp.results(0).token());
  }
  return grpc::Status::OK;
}

void ExpectReferenceGreedy(int port) {
  const auto gens = nlohmann::json::parse(testing::ReadFile(testing::GemmaTinyDir() + "/reference/tiny-mqa/generations.json"));
  auto stub = Client(port);
  for (const auto& g : gens["results"]) {
    std::vector<int> got;
    ASSERT_TRUE(Greedy(*stub, g["prompt_ids"].get<std::vector<int>>(), 32, &got).ok());
    const auto ref = g["generated_ids"].get<std::vector<int>>();
    const size_t compare = g["first_step_with_margin_below_1e-3"].is_null() ? 32 : g["first_step_with_margin_below_1e-3"].get<size_t>();
    EXPECT_TRUE(std::equal(ref.begin(), ref.begin() + compare, got.begin())) << g["prompt"];
  }
}

// --help lists the worker's own flags (not abseil's "No flags matched"), named from the source tree's top.
TEST(WorkerTest, HelpListsTheWorkersFlags) {
  const std::string text = testing::CommandOutput(std::string(WORKER_BINARY) + " --help");
  for (const char* flag : {"--model ", "--listen_host ", "--tp ", "--threads "}) {
    EXPECT_NE(text.find(flag), std::string::npos) << flag << " is missing from:\n" << text;
  }
  EXPECT_NE(text.find("Flags from worker/worker_options.cc:"), std::string::npos) << text;
}

TEST(WorkerTest, SingleRankServesInfoHealthAndReferenceTokens) {
  // A --max_model_len past the model's context is the model's, said at start.
  Group g = StartGroup(testing::GemmaTinyDir() + "/tiny-mqa", 1, 3000, {"--max_model_len=100000"});
  ASSERT_GT(g.port, 0) << g.ranks[0]->Err();
  EXPECT_NE(g.ranks[0]->Err().find("--max_model_len 100000 is more than the model's context; sequences hold at most "
                                   "512 positions"),
            std::string::npos) << g.ranks[0]->Err();
  auto stub = Client(g.port);
  worker::v1::ModelInfo info;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub->GetModelInfo(&ctx, {}, &info).ok());
  EXPECT_EQ(info.vocab_size(), 4096);
  EXPECT_EQ(info.num_kv_heads(), 1);
  EXPECT_EQ(info.tokenizer_model().size(), 61137u);
  EXPECT_EQ(info.tensor_parallel(), 1);
  // The defaults (and that --max_model_len), resolved against the model (its context is 512).
  EXPECT_EQ(info.max_tokens_per_step(), 2048);
  EXPECT_EQ(info.max_batch_size(), 256);
  EXPECT_EQ(info.max_model_len(), 512);
  grpc::health::v1::HealthCheckResponse hresp;
  ASSERT_TRUE(CheckHealth(g.port, &hresp).ok());
  EXPECT_EQ(hresp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  ExpectReferenceGreedy(g.port);
}

TEST(WorkerTest, TwoRanksGiveReferenceTokensAndScores) {
  Group g = StartGroup(testing::GemmaTinyDir() + "/tiny-mqa", 2);
  ASSERT_GT(g.port, 0) << g.ranks[0]->Err() << g.ranks[1]->Err();
  ExpectReferenceGreedy(g.port);
  const auto scores = nlohmann::json::parse(testing::ReadFile(testing::GemmaTinyDir() + "/reference/tiny-mqa/scores.json"));
  const auto ids = scores["prompts"][0]["ids"].get<std::vector<int>>();
  StepRequest req;
  auto* s = req.add_sequences();
  for (size_t i = 0; i < ids.size(); ++i) {
    s->add_tokens(ids[i]);
    s->add_score_targets(i + 1 < ids.size() ? ids[i + 1] : -1);
  }
  for (int b = 0; b < 4; ++b) s->add_block_table(b);
  StepResponse resp;
  grpc::ClientContext ctx;
  auto stub = Client(g.port);
  req.set_epoch(Lease(*stub));
  ASSERT_TRUE(stub->Step(&ctx, req, &resp).ok());
  const auto want = scores["prompts"][0]["token_logprobs"].get<std::vector<double>>();
  ASSERT_EQ(resp.results(0).score_logprobs_size(), static_cast<int>(ids.size()));
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(resp.results(0).score_logprobs(i), want[i], 1e-4);
}

TEST(WorkerTest, MalformedStepIsInvalidArgumentAndTheGroupStaysUp) {
  Group g = StartGroup(testing::GemmaTinyDir() + "/tiny-mqa", 1);
  ASSERT_GT(g.port, 0);
  StepRequest req;
  auto* s = req.add_sequences();
  s->add_tokens(99999);
  s->add_block_table(0);
  StepResponse resp;
  grpc::ClientContext ctx;
  auto stub = Client(g.port);
  req.set_epoch(Lease(*stub));
  const grpc::Status st = stub->Step(&ctx, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("outside the vocabulary"), std::string::npos) << st.error_message();
  std::vector<int> got;
  EXPECT_TRUE(Greedy(*Client(g.port), {2, 3791, 323}, 2, &got).ok());
}

// Steps beyond the worker's limits are refused before they run (a GPU's buffers are sized for no more), with the
// flag to change; the group stays up, and the limits are what the model info reports.
TEST(WorkerTest, StepsBeyondTheLimitsAreRefusedNamingTheFlag) {
  Group g = StartGroup(testing::GemmaTinyDir() + "/tiny-mqa", 2, 3000,
                       {"--max_tokens_per_step=8", "--max_batch_size=2", "--max_model_len=40"});
  ASSERT_GT(g.port, 0) << g.ranks[0]->Err() << g.ranks[1]->Err();
  auto stub = Client(g.port);
  worker::v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->GetModelInfo(&ctx, {}, &info).ok());
  }
  EXPECT_EQ(info.max_tokens_per_step(), 8);
  EXPECT_EQ(info.max_batch_size(), 2);
  EXPECT_EQ(info.max_model_len(), 40);
  const auto step = [&](int sequences, int tokens, int start_pos) {
    StepRequest req;
    for (int i = 0; i < sequences; ++i) {
      auto* s = req.add_sequences();
      s->set_sequence_id(i + 1);
      for (int t = 0; t < tokens; ++t) s->add_tokens(2 + t);
      s->set_start_pos(start_pos);
      for (int b = 0; b < 3; ++b) s->add_block_table(i * 3 + b);
      s->set_sample(true);
    }
    req.set_epoch(Lease(*stub));
    StepResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    return stub->Step(&ctx, req, &resp);
  };
  const struct {
    int sequences, tokens, start_pos;
    const char* flag;
  } refused[] = {{1, 9, 0, "--max_tokens_per_step"}, {2, 5, 0, "--max_tokens_per_step"},
                 {3, 1, 0, "--max_batch_size"}, {1, 2, 39, "--max_model_len"}};
  for (const auto& c : refused) {
    const grpc::Status st = step(c.sequences, c.tokens, c.start_pos);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.flag;
    EXPECT_NE(st.error_message().find(c.flag), std::string::npos) << st.error_message();
  }
  EXPECT_TRUE(step(2, 4, 0).ok());   // at the limits
  EXPECT_TRUE(step(1, 1, 39).ok());  // the last position
  grpc::health::v1::HealthCheckResponse hresp;
  ASSERT_TRUE(CheckHealth(g.port, &hresp).ok());
  EXPECT_EQ(hresp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST(WorkerTest, KilledRankMakesStepsUnavailableAndARestartedGroupServes) {
  const std::string model = testing::GemmaTinyDir() + "/tiny-mqa";
  {
    Group g = StartGroup(model, 2, 2000);
    ASSERT_GT(g.port, 0);
    std::vector<int> got;
    ASSERT_TRUE(Greedy(*Client(g.port), {2, 3791, 323}, 2, &got).ok());
    g.ranks[1]->Kill();
    const auto start = std::chrono::steady_clock::now();
    got.clear();
    const grpc::Status st = Greedy(*Client(g.port), {2, 3791, 323}, 4, &got);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(8));
    // Until it exits, rank 0 says its group has failed: a router probing it does not take it back.
    worker::v1::ModelInfo info;
    grpc::ClientContext info_ctx;
    EXPECT_EQ(Client(g.port)->GetModelInfo(&info_ctx, {}, &info).error_code(), grpc::StatusCode::UNAVAILABLE);
    grpc::health::v1::HealthCheckResponse hresp;
    const grpc::Status hs = CheckHealth(g.port, &hresp);
    EXPECT_TRUE(!hs.ok() || hresp.status() == grpc::health::v1::HealthCheckResponse::NOT_SERVING);
    EXPECT_EQ(g.ranks[0]->WaitExit(std::chrono::seconds(8)), 1) << "the leader of a failed group exits to be restarted";
  }
  Group again = StartGroup(model, 2, 2000);
  ASSERT_GT(again.port, 0);
  std::vector<int> got;
  EXPECT_TRUE(Greedy(*Client(again.port), {2, 3791, 323}, 3, &got).ok());
}

TEST(WorkerTest, ConfiguredFromEnvironmentAndExportsMetrics) {
  // As a StatefulSet gives it: model, world size, leader and rank from the environment.
  const std::string model = testing::GemmaTinyDir() + "/tiny-mqa";
  const std::string peer = std::to_string(FreePort());
  const int metrics_port = FreePort();
  const std::string port_file = ::testing::TempDir() + "/env_port_" + std::to_string(::getpid());
  std::remove(port_file.c_str());
  std::vector<std::unique_ptr<Proc>> ranks;
  for (int r = 0; r < 2; ++r) {
    std::vector<std::string> args = {"--peer_port=" + peer, "--port_file=" + port_file, "--threads=1", "--kv_cache_mb=16"};
    if (r == 0) args.push_back("--metrics_port=" + std::to_string(metrics_port));
    if (r == 1) args.push_back("--metrics_port=" + std::to_string(metrics_port + 1));
    ranks.push_back(StartWorker(args, {"GEMMA_MODEL=" + model, "GEMMA_WORLD_SIZE=2", "GEMMA_RANK=" + std::to_string(r),
                                       "GEMMA_LEADER=127.0.0.1:" + peer, "GEMMA_GROUP_NAME=env-group",
                                       "GEMMA_GROUP_WAIT_TIMEOUT_MS=60000"}));
  }
  int port = 0;
  for (int i = 0; i < 300 && port == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::ifstream in(port_file);
    in >> port;
    if (!in) port = 0;
  }
  ASSERT_GT(port, 0) << ranks[0]->Err() << ranks[1]->Err();
  std::vector<int> got;
  ASSERT_TRUE(Greedy(*Client(port), {2, 3791, 323}, 3, &got).ok());
  const std::string metrics = testing::HttpGet(metrics_port, "/metrics");
  for (const char* name : {"gemma_worker_step_duration_seconds_bucket", "gemma_worker_forward_duration_seconds_count",
                           "gemma_worker_collective_duration_seconds_sum", "gemma_worker_steps_total",
                           "gemma_worker_kv_blocks_used", "gemma_worker_kv_blocks{rank=\"0\"}",
                           "gemma_worker_group_healthy", "gemma_worker_rank_step_duration_seconds_count{rank=\"0\"} 3",
                           "gemma_worker_rank_collective_duration_seconds_count{rank=\"0\"} 3",
                           "gemma_build_info{protocol=\"6\",version=\"",
                           "gemma_worker_step_limit{limit=\"tokens\",rank=\"0\"} 2048",
                           "gemma_worker_step_limit{limit=\"sequences\",rank=\"0\"} 256",
                           "gemma_worker_step_limit{limit=\"context\",rank=\"0\"} 512",
                           "gemma_worker_step_tokens_count{rank=\"0\"} 3",
                           "gemma_worker_model_info{device=\"cpu\",model=\"tiny-mqa\",shape=\"custom\",tp=\"2\"} 1"}) {
    EXPECT_NE(metrics.find(name), std::string::npos) << name << " missing from:\n" << metrics.substr(0, 2000);
  }
  EXPECT_NE(metrics.find("gemma_worker_steps_total{rank=\"0\"} 3"), std::string::npos) << metrics.substr(0, 3000);
  EXPECT_NE(metrics.find("gemma_worker_kv_blocks_used{rank=\"0\"} 8"), std::string::npos);
  EXPECT_EQ(metrics.find("gemma_worker_kv_blocks_total"), std::string::npos) << "renamed gemma_worker_kv_blocks";
  // The follower's own view of the same steps (its step time, and its wait in collectives).
  const std::string follower = ScrapeUntil(metrics_port + 1, [](const std::string& text) {
    return text.find("gemma_worker_rank_step_duration_seconds_count{rank=\"1\"} 3") != std::string::npos &&
           text.find("gemma_worker_rank_collective_duration_seconds_count{rank=\"1\"} 3") != std::string::npos;
  });
  EXPECT_NE(follower.find("gemma_worker_rank_step_duration_seconds_count{rank=\"1\"} 3"), std::string::npos)
      << follower.substr(0, 3000);
  EXPECT_NE(follower.find("gemma_worker_rank_collective_duration_seconds_count{rank=\"1\"} 3"), std::string::npos);
  EXPECT_GT(Sample(follower, "gemma_worker_rank_step_duration_seconds_sum{rank=\"1\"}"), 0);
  // The group's step counts are the leader's alone: a follower shows none rather than zeros for steps it ran.
  for (const char* leaders : {"gemma_worker_steps_total", "gemma_worker_step_duration_seconds",
                              "gemma_worker_kv_blocks_used", "gemma_worker_step_limit",
                              "gemma_worker_group_healthy"}) {
    EXPECT_EQ(follower.find(leaders), std::string::npos) << leaders << " on a follower:\n" << follower.substr(0, 3000);
  }
  worker::v1::ModelInfo info;
  grpc::ClientContext ctx;
  ASSERT_TRUE(Client(port)->GetModelInfo(&ctx, {}, &info).ok());
  EXPECT_EQ(info.group_name(), "env-group");
  EXPECT_EQ(info.protocol_version(), static_cast<uint32_t>(worker::v1::PROTOCOL_VERSION_CURRENT));
}

TEST(WorkerTest, BadFlagsGiveClearErrors) {
  const std::string model = "--model=" + testing::GemmaTinyDir() + "/tiny-mha";
  struct Case {
    std::vector<std::string> args;
    std::string needle;
  };
  const std::string dead_leader = "--leader=127.0.0.1:" + std::to_string(FreePort());
  for (const Case& c : std::vector<Case>{
           {{model, "--rank=2", "--world_size=2"}, "allowed: 0..1"},
           {{model, "--rank=0", "--world_size=3"}, "does not divide the 4 attention heads"},
           {{model, "--device=tpu"}, "allowed: cpu, cuda"},
           {{model, "--device=cuda", "--precision=f16"}, "allowed: bf16, f32"},
           {{"--model=/nonexistent"}, "/nonexistent"},
           {{model, "--rank=1", "--world_size=2", dead_leader, "--group_wait_timeout_ms=1500"},
            "could not reach the group leader's rendezvous"},
           {{model, "--group_wait_timeout_ms=50"}, "--group_wait_timeout_ms 50 is invalid; allowed: 100..86400000"},
           {{model, "--drain_timeout_ms=-1"}, "--drain_timeout_ms -1 is invalid; allowed: 0..3600000"},
           {{model, "--max_tokens_per_step=0"}, "--max_tokens_per_step 0 is invalid; allowed: 1..1048576"},
           {{model, "--gpu_memory_fraction=1.2"}, "--gpu_memory_fraction 1.2 is invalid; allowed: more than 0, at most 1"},
           {{model, "--tp=3"}, "gemma-worker: tensor-parallel degree 3 does not divide the 4 attention heads"},
           {{model, "--tp=4", "--ranks_per_host=3"}, "--ranks_per_host 3 does not divide --tp 4"},
           {{model, "--tp=2000"}, "--tp 2000 is invalid; allowed: 0 (one rank) or 1..1024"},
       }) {
    auto p = StartWorker(c.args);
    const int code = p->WaitExit(std::chrono::seconds(10));
    EXPECT_GT(code, 0) << c.needle;
    EXPECT_NE(p->Err().find(c.needle), std::string::npos) << p->Err();
  }
}

// gRPC would let a second server bind a port with SO_REUSEPORT and take half of the first one's connections; a
// worker started on a port another one serves must fail and say so.
TEST(WorkerTest, APortAnotherWorkerServesIsAClearError) {
  const std::string model = "--model=" + testing::GemmaTinyDir() + "/tiny-mha";
  Group first = StartGroup(testing::GemmaTinyDir() + "/tiny-mha", 1);
  ASSERT_GT(first.port, 0) << first.ranks[0]->Err();
  auto second = StartWorker({model, "--port=" + std::to_string(first.port), "--threads=1", "--kv_cache_mb=16"});
  EXPECT_GT(second->WaitExit(std::chrono::seconds(20)), 0) << "the second worker serves the same port";
  EXPECT_NE(second->Err().find("cannot listen on port " + std::to_string(first.port)), std::string::npos)
      << second->Err();
  grpc::health::v1::HealthCheckResponse health;
  EXPECT_TRUE(CheckHealth(first.port, &health).ok()) << "the first worker still serves";
}

// Asking for CUDA where it cannot run (a build without nvcc, or no device) is a clear error, not a crash.
TEST(WorkerTest, CudaWithoutADeviceIsAClearError) {
  int devices = 0;
  {
    auto probe = StartWorker({"--model=" + testing::GemmaTinyDir() + "/tiny-mha", "--device=cuda"});
    const int code = probe->WaitExit(std::chrono::seconds(20));
    const std::string err = probe->Err();
    if (err.find("gemma-worker rank 0") != std::string::npos) devices = 1;  // it loaded: a device is present
    if (devices == 0) {
      EXPECT_GT(code, 0);
      EXPECT_TRUE(err.find("--device cuda: this build has no CUDA backend module") != std::string::npos ||
                  err.find("--device cuda: this process sees no CUDA device") != std::string::npos)
          << err;
    }
  }
  if (devices > 0) GTEST_SKIP() << "a CUDA device is present";
}

}  // namespace
}  // namespace gemma

namespace gemma {
namespace {

// Overlapped scheduling: a step sent before the one it follows waits for it, then takes the token it drew.
TEST(WorkerTest, AStepSentAheadRunsAfterTheOneItFollowsWithItsDraw) {
  Group g = StartGroup(testing::GemmaTinyDir() + "/tiny-mqa", 1);
  ASSERT_GT(g.port, 0);
  auto stub = Client(g.port);
  const std::vector<int> prompt = {2, 3791, 323};
  std::vector<int> expected;
  ASSERT_TRUE(Greedy(*stub, prompt, 2, &expected).ok());  // the draws one step at a time

  auto step = [&](uint64_t id, uint64_t after, bool from_last, std::vector<int> tokens, int start) {
    StepRequest req;
    req.set_session(42);
    req.set_step_id(id);
    req.set_after_step(after);
    auto* s = req.add_sequences();
    s->set_sequence_id(9);
    for (int t : tokens) s->add_tokens(t);
    s->set_token_from_last_step(from_last);
    s->set_start_pos(start);
    for (int b = 0; b < 8; ++b) s->add_block_table(b);
    s->set_sample(true);
    StepResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    auto client = Client(g.port);
    req.set_epoch(Lease(*client));
    const grpc::Status st = client->Step(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return st.ok() ? resp.results(0).token() : -1;
  };
  EXPECT_EQ(step(1, 0, false, {2, 5}, 0) >= 0, true);  // the session's first step: the worker now knows it
  // The third step first: it must wait for the second, which arrives later.
  auto third = std::async(std::launch::async, [&] { return step(3, 2, true, {}, 3); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(third.wait_for(std::chrono::seconds(0)), std::future_status::timeout) << "ran before its predecessor";
  EXPECT_EQ(step(2, 0, false, prompt, 0), expected[0]);
  EXPECT_EQ(third.get(), expected[1]);
  // A session the worker does not hold (another router, or one it dropped) is refused at once, not waited for.
  StepRequest orphan;
  orphan.set_session(43);
  orphan.set_step_id(5);
  orphan.set_after_step(4);
  orphan.set_epoch(Lease(*stub));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  StepResponse resp;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(stub->Step(&ctx, orphan, &resp).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

// Fencing: once another router has taken the lease, the old holder's steps are refused before they run.
TEST(WorkerTest, AStaleRoutersStepIsRefusedAndTheNewHoldersRuns) {
  Group g = StartGroup(testing::GemmaTinyDir() + "/tiny-mqa", 1);
  ASSERT_GT(g.port, 0);
  auto stub = Client(g.port);
  auto step = [&](uint64_t epoch) {
    StepRequest req;
    req.set_epoch(epoch);
    auto* s = req.add_sequences();
    s->set_sequence_id(1);
    s->add_tokens(2);
    s->add_block_table(0);
    s->set_sample(true);
    StepResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    return stub->Step(&ctx, req, &resp);
  };
  // A ttl long enough that a loaded machine does not let it lapse before router-b asks.
  const uint64_t first = Lease(*stub, "router-a", 2000);
  EXPECT_TRUE(step(first).ok());
  // router-b cannot take it while router-a renews...
  worker::v1::LeaseRequest b;
  b.set_router_id("router-b");
  b.set_router_address("10.0.0.2:50052");
  b.set_protocol_version(worker::v1::PROTOCOL_VERSION_CURRENT);
  b.set_ttl_ms(60000);
  worker::v1::LeaseState state;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->AcquireLease(&ctx, b, &state).ok());
  }
  EXPECT_FALSE(state.granted());
  EXPECT_EQ(state.holder_id(), "router-a");
  // ...but once router-a stalls past its ttl, router-b takes it under a new epoch.
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->AcquireLease(&ctx, b, &state).ok());
  }
  ASSERT_TRUE(state.granted());
  EXPECT_GT(state.epoch(), first);
  const grpc::Status stale = step(first);
  EXPECT_EQ(stale.error_code(), grpc::StatusCode::ABORTED) << stale.error_message();
  EXPECT_NE(stale.error_message().find("router-b"), std::string::npos) << stale.error_message();
  EXPECT_EQ(step(0).error_code(), grpc::StatusCode::ABORTED);
  EXPECT_TRUE(step(state.epoch()).ok());
  worker::v1::LeaseState seen;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub->GetLease(&ctx, {}, &seen).ok());
  EXPECT_EQ(seen.holder_id(), "router-b");
  EXPECT_EQ(seen.holder_address(), "10.0.0.2:50052");
}

// The pids of a process's children (a launcher's ranks), oldest first.
std::vector<pid_t> Children(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  std::vector<pid_t> out;
  for (pid_t c; in >> c;) out.push_back(c);
  return out;
}

// One prefill step of `prompt` (sequence 7, blocks 0..7) under `epoch`.
grpc::Status PrefillStep(worker::v1::Worker::Stub& stub, uint64_t epoch, const std::vector<int>& prompt,
                         StepResponse* resp) {
  StepRequest req;
  req.set_epoch(epoch);
  auto* s = req.add_sequences();
  s->set_sequence_id(7);
  for (int t : prompt) s->add_tokens(t);
  for (int b = 0; b < 8; ++b) s->add_block_table(b);
  s->set_sample(true);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  return stub.Step(&ctx, req, resp);
}

// gemma-worker --tp 2: one process starts and supervises the whole group; rank 0 serves the Worker API, the launcher
// every rank's metrics on the pod's one port; a rank that dies takes the group (and the launcher, so the pod restarts) down.
TEST(WorkerTest, TpLauncherRunsTheGroupAndGoesDownWithAnyRank) {
  const std::string port_file = ::testing::TempDir() + "/launcher_port_" + std::to_string(::getpid());
  std::remove(port_file.c_str());
  const int metrics_port = FreePort();
  auto launcher = StartWorker({"--model=" + testing::GemmaTinyDir() + "/tiny-mqa", "--tp=2",
                               "--peer_port=" + std::to_string(FreePort()), "--port_file=" + port_file,
                               "--metrics_port=" + std::to_string(metrics_port), "--threads=1", "--kv_cache_mb=16",
                               "--timeout_ms=3000", "--group_name=launched"});
  const int port = testing::WaitForPortFile(port_file, std::chrono::seconds(30));
  ASSERT_GT(port, 0) << launcher->Err();
  auto stub = Client(port);
  worker::v1::ModelInfo info;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub->GetModelInfo(&ctx, {}, &info).ok());
  EXPECT_EQ(info.tensor_parallel(), 2);
  EXPECT_EQ(info.group_name(), "launched");
  StepResponse resp;
  ASSERT_TRUE(PrefillStep(*stub, Lease(*stub), {2, 3791, 323}, &resp).ok()) << launcher->Err();
  ASSERT_EQ(resp.results_size(), 1);
  EXPECT_TRUE(resp.results(0).sampled());
  EXPECT_FALSE(resp.draining());
  // The pod's one metrics port carries every rank, each with its own view of the step, as one valid exposition.
  const std::string m = ScrapeUntil(metrics_port, [](const std::string& text) {
    return Sample(text, "gemma_worker_rank_step_duration_seconds_count{rank=\"1\"}") == 1 &&
           Sample(text, "gemma_worker_rank_up{rank=\"1\"}") == 1;
  });
  for (int rank = 0; rank < 2; ++rank) {
    const std::string r = "{rank=\"" + std::to_string(rank) + "\"}";
    EXPECT_EQ(Sample(m, "gemma_worker_rank_step_duration_seconds_count" + r), 1) << m;
    EXPECT_EQ(Sample(m, "gemma_worker_rank_up" + r), 1) << m;
  }
  size_t types = 0;
  for (size_t at = m.find("\n# TYPE gemma_worker_rank_step_duration_seconds "); at != std::string::npos;
       at = m.find("\n# TYPE gemma_worker_rank_step_duration_seconds ", at + 1)) {
    ++types;
  }
  EXPECT_EQ(types, 1u) << m;
  EXPECT_EQ(Sample(m, "gemma_worker_steps_total{rank=\"0\"}"), 1) << "rank 0's leader metrics come through too";

  const std::vector<pid_t> ranks = Children(launcher->pid);
  ASSERT_EQ(ranks.size(), 2u);
  ::kill(ranks[1], SIGKILL);
  EXPECT_EQ(launcher->WaitExit(std::chrono::seconds(15)), 1);
  EXPECT_NE(launcher->Err().find("rank 1 exited (killed by signal 9"), std::string::npos) << launcher->Err();
  EXPECT_EQ(::kill(ranks[0], 0), -1) << "rank 0 outlived its launcher";
}

// SIGTERM to the launcher (what Kubernetes sends the pod) reaches the ranks: rank 0 drains and stops its follower,
// and the launcher exits 0 once both have.
TEST(WorkerTest, TpLauncherStopsCleanlyOnSigtermOnceItsRanksHave) {
  const std::string port_file = ::testing::TempDir() + "/launcher_stop_port_" + std::to_string(::getpid());
  std::remove(port_file.c_str());
  auto launcher = StartWorker({"--model=" + testing::GemmaTinyDir() + "/tiny-mqa", "--tp=2",
                               "--peer_port=" + std::to_string(FreePort()), "--port_file=" + port_file, "--threads=1",
                               "--kv_cache_mb=16"});
  const int port = testing::WaitForPortFile(port_file, std::chrono::seconds(30));
  ASSERT_GT(port, 0) << launcher->Err();
  const std::vector<pid_t> ranks = Children(launcher->pid);
  ASSERT_EQ(ranks.size(), 2u);
  ::kill(launcher->pid, SIGTERM);
  EXPECT_EQ(launcher->WaitExit(std::chrono::seconds(15)), 0) << launcher->Err();
  EXPECT_NE(launcher->Err().find("every rank exited cleanly"), std::string::npos) << launcher->Err();
  for (pid_t r : ranks) EXPECT_EQ(::kill(r, 0), -1) << "rank " << r << " outlived its launcher";
}

// Ranks wait for their group under --group_wait_timeout_ms, not the short failure timeout, and say who is missing.
TEST(WorkerTest, ARankWhoseGroupNeverComesFailsAfterTheGroupWaitTimeout) {
  const std::string peer = std::to_string(FreePort());
  const auto start = std::chrono::steady_clock::now();
  auto rank0 = StartWorker({"--model=" + testing::GemmaTinyDir() + "/tiny-mqa", "--rank=0", "--world_size=2",
                            "--peer_port=" + peer, "--leader=127.0.0.1:" + peer, "--threads=1", "--kv_cache_mb=16",
                            "--timeout_ms=500", "--group_wait_timeout_ms=2500"});
  EXPECT_EQ(rank0->WaitExit(std::chrono::seconds(20)), 1);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_GE(took, std::chrono::milliseconds(2500)) << "gave up at the failure timeout, not the group wait";
  EXPECT_NE(rank0->Err().find("rank(s) 1 of the group never arrived within --group_wait_timeout_ms 2500; arrived: 0"),
            std::string::npos)
      << rank0->Err();
}

// SIGTERM: rank 0 turns NOT_SERVING at once, keeps answering steps (each says draining), and exits 0 once no step
// has come for a second.
TEST(WorkerTest, ADrainingWorkerRunsStepsSaysSoAndExitsWhenTheyStop) {
  Group g = StartGroup(testing::GemmaTinyDir() + "/tiny-mqa", 2);
  ASSERT_GT(g.port, 0);
  auto stub = Client(g.port);
  const uint64_t epoch = Lease(*stub);
  StepResponse resp;
  ASSERT_TRUE(PrefillStep(*stub, epoch, {2, 3791, 323}, &resp).ok());
  EXPECT_FALSE(resp.draining());
  ::kill(g.ranks[0]->pid, SIGTERM);
  const auto stop = std::chrono::steady_clock::now();
  grpc::health::v1::HealthCheckResponse health;
  for (int i = 0; i < 20 && health.status() != grpc::health::v1::HealthCheckResponse::NOT_SERVING; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ASSERT_TRUE(CheckHealth(g.port, &health).ok());
  }
  EXPECT_EQ(health.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  // Steps every 100 ms for 3 s: longer than the second of quiet, so the steps are what keep it up (a gap of a
  // second between two, on a loaded machine, would let it go).
  auto last = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - stop < std::chrono::seconds(3)) {
    ASSERT_TRUE(PrefillStep(*stub, epoch, {2, 3791, 323}, &resp).ok()) << g.ranks[0]->Err();
    last = std::chrono::steady_clock::now();  // the quiet second counts from the last step's answer
    EXPECT_TRUE(resp.draining());
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(g.ranks[0]->WaitExit(std::chrono::seconds(10)), 0) << g.ranks[0]->Err();
  EXPECT_GE(std::chrono::steady_clock::now() - last, std::chrono::milliseconds(900));
  EXPECT_EQ(g.ranks[1]->WaitExit(std::chrono::seconds(10)), 0) << "rank 0 told its follower to stop";
}

}  // namespace
}  // namespace gemma
