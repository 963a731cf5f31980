// One router in front of several worker groups: a request goes where its prefix is cached, a failed group's
// requests move or fail and the group comes back, a group with a dead follower gets nothing new, an idle router
// with a dead group burns no CPU; and groups on Gemma 2 and Gemma 3 checkpoints serve the reference tokens.
#include <grpcpp/grpcpp.h>

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <future>
#include <thread>

#include "gemma/v1/gemma.grpc.pb.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "router/router_test_support.h"
#include "tests/processes.h"
#include "tests/testdata.h"

namespace gemma {
namespace {

TEST(RouterGroupsTest, ARequestGoesToTheGroupHoldingItsPrefixWhenItIsNotMuchBusier) {
  const std::string model = "--model=" + GemmaTinyDir() + "/tiny-mqa";
  const int port_a = testing::FreePort(), port_b = testing::FreePort();
  // Each group's metrics are labelled with its name (the host name by default, the same for both here).
  auto a = testing::Start(WORKER_BINARY, {model, "--port=" + std::to_string(port_a), "--threads=1", "--kv_cache_mb=32",
                                          "--group_name=group-a"});
  auto b = testing::Start(WORKER_BINARY, {model, "--port=" + std::to_string(port_b), "--threads=1", "--kv_cache_mb=32",
                                          "--group_name=group-b"});
  const std::string port_file = ::testing::TempDir() + "/router_pa_" + std::to_string(::getpid());
  std::remove(port_file.c_str());
  const int metrics = testing::FreePort();
  auto router = testing::Start(ROUTER_BINARY, {"--plaintext",
                                               "--workers=127.0.0.1:" + std::to_string(port_a) + ",127.0.0.1:" +
                                                   std::to_string(port_b),
                                               "--port_file=" + port_file, "--metrics_port=" + std::to_string(metrics)});
  const int port = testing::WaitForPortFile(port_file, std::chrono::seconds(30));
  ASSERT_GT(port, 0) << router->Err();
  auto stub = v1::Gemma::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  std::vector<int> prefix = {2};
  for (int i = 0; i < 80; ++i) prefix.push_back(500 + (i * 13) % 3000);
  auto with_suffix = [&](int s) {
    auto p = prefix;
    p.insert(p.end(), {s, s + 1, s + 2});
    return p;
  };
  auto generate = [&](const std::vector<int>& ids) {
    grpc::ClientContext ctx;
    v1::GenerateResponse resp;
    EXPECT_TRUE(stub->Generate(&ctx, Ids(ids, 4), &resp).ok());
  };
  auto cached = [&](int worker_port) {
    const std::string name = std::string("gemma_router_prefix_cache_blocks{group=\"") +
                             (worker_port == port_a ? "group-a" : "group-b") + "\"}";
    return Sample(testing::HttpGet(metrics, "/metrics"), name);
  };
  ASSERT_TRUE(WaitForHealthyGroups(*stub, 2));
  generate(with_suffix(10));  // both idle: the first group, which now holds the prefix
  for (int i = 0; i < 40 && cached(port_a) <= 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_GT(cached(port_a), 0);
  // An unrelated long stream makes the first group the busier one.
  grpc::ClientContext long_ctx;
  auto long_stream = stub->GenerateStream(&long_ctx, Ids({2, 7, 8, 9}, 400));
  v1::GenerateStreamResponse event;
  ASSERT_TRUE(long_stream->Read(&event));
  generate(with_suffix(20));  // still goes where its prefix is
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_LE(cached(port_b), 0) << "the request went to the group without its prefix";
  long_ctx.TryCancel();
  while (long_stream->Read(&event)) {
  }
}

TEST(RouterGroupsTest, AKilledGroupFailsItsStreamsAnotherKeepsServingAndTheGroupReturns) {
  const std::string model = "--model=" + GemmaTinyDir() + "/tiny-mqa";
  const int port_a = testing::FreePort(), port_b = testing::FreePort();
  auto start_worker = [&](int port) {
    return testing::Start(WORKER_BINARY, {model, "--port=" + std::to_string(port), "--threads=1", "--kv_cache_mb=32"});
  };
  auto a = start_worker(port_a);
  auto b = start_worker(port_b);
  const std::string port_file = ::testing::TempDir() + "/router_ha_" + std::to_string(::getpid());
  std::remove(port_file.c_str());
  auto router = testing::Start(ROUTER_BINARY, {"--plaintext", "--workers=127.0.0.1:" + std::to_string(port_a) + ",127.0.0.1:" +
                                                   std::to_string(port_b),
                                               "--port_file=" + port_file});
  const int port = testing::WaitForPortFile(port_file, std::chrono::seconds(30));
  ASSERT_GT(port, 0) << router->Err();
  auto stub = v1::Gemma::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  auto healthy_groups = [&] { return HealthyGroups(*stub); };
  ASSERT_TRUE(WaitForHealthyGroups(*stub, 2));
  // Long streams spread over both groups; then group A dies mid-stream (once every stream has a token: a request
  // that has not started would move to group B instead).
  std::vector<std::future<grpc::StatusCode>> streams;
  std::atomic<int> started{0};
  for (int i = 0; i < 6; ++i) {
    streams.push_back(std::async(std::launch::async, [&stub, &started, i] {
      v1::GenerateRequest req = Ids({2, 100 + i, 200 + i}, 400);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      auto reader = stub->GenerateStream(&ctx, req);
      v1::GenerateStreamResponse event;
      if (reader->Read(&event)) ++started;
      while (reader->Read(&event)) {
      }
      return reader->Finish().error_code();
    }));
  }
  for (int i = 0; i < 6000 && started < 6; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  a->Kill();
  int ok = 0, unavailable = 0;
  for (auto& s : streams) {
    const grpc::StatusCode code = s.get();  // none hangs: each ends one way or the other
    ok += code == grpc::StatusCode::OK;
    unavailable += code == grpc::StatusCode::UNAVAILABLE;
  }
  EXPECT_EQ(ok + unavailable, 6);
  EXPECT_GE(unavailable, 1) << "group A's streams end with UNAVAILABLE";
  EXPECT_GE(ok, 1) << "group B's streams complete";
  EXPECT_EQ(healthy_groups(), 1);
  for (int i = 0; i < 4; ++i) {  // new work goes to the group still up
    v1::GenerateResponse resp;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub->Generate(&ctx, Ids({2, 3791, 323}, 8), &resp).ok());
  }
  a = start_worker(port_a);  // restarted on its address: the router takes it back
  int groups = 0;
  for (int i = 0; i < 200 && groups < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    groups = healthy_groups();
  }
  EXPECT_EQ(groups, 2);
}


TEST(RouterGroupsTest, AGroupWhoseFollowerDiedGetsNoNewRequests) {
  TpGroup a = StartTpGroup(2), b = StartTpGroup(2);
  const int metrics_port = testing::FreePort();
  RouterProcess router = StartRouter({a.port, b.port}, {"--metrics_port=" + std::to_string(metrics_port)});
  ASSERT_GT(router.port, 0) << router.process->Err();
  ASSERT_TRUE(router.WaitForHealthyGroups(2));
  // The follower dies while the groups are idle: the requests that follow are first given to group A (the
  // least loaded, listed first); its failed step moves them, not yet started, to group B.
  a.ranks[1]->Kill();
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(GenerateCode(*router.stub, Ids({2, 3791, 323 + i}, 8)), grpc::StatusCode::OK) << i;
  }
  // Rank 0 of A may still answer for a moment, but its group is broken: the router never takes it back.
  // A itself, as the router's metrics say: out (0) or dropped (absent), never serving again (B may be counted out
  // for a moment by a slow health answer on a loaded machine, so the count of healthy groups would not tell).
  const std::string a_healthy = "gemma_router_group_healthy{group=\"127.0.0.1:" + std::to_string(a.port) + "\"}";
  for (int i = 0; i < 15; ++i) {
    const std::string metrics = testing::HttpGet(metrics_port, "/metrics");
    ASSERT_NE(metrics.find("gemma_router_group_healthy"), std::string::npos) << "no metrics: " << metrics;
    EXPECT_NE(Sample(metrics, a_healthy), 1) << "after " << i * 200 << " ms";
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(GenerateCode(*router.stub, Ids({2, 3791, 323}, 8)), grpc::StatusCode::OK) << i;
  }
}

TEST(RouterGroupsTest, AnIdleRouterWithADeadGroupBurnsNoCpu) {
  TpGroup a = StartTpGroup(2), b = StartTpGroup(2);
  RouterProcess router = StartRouter({a.port, b.port});
  ASSERT_GT(router.port, 0) << router.process->Err();
  a.ranks[1]->Kill();
  for (int i = 0; i < 3; ++i) GenerateCode(*router.stub, Ids({2, 3791, 323}, 8));
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const double before = CpuSeconds(router.process->pid);
  std::this_thread::sleep_for(std::chrono::seconds(5));
  const double used = CpuSeconds(router.process->pid) - before;
  // A busy loop would use a whole core; probes and lease renewals a little, more on a loaded machine.
  EXPECT_LT(used / 5, 0.05) << used << " CPU seconds in 5 s of idleness";
}

// A group whose model cannot tokenize text for the router (no tokenizer.model, or another model's) is not added,
// and the router says why.
TEST(RouterGroupsTest, AGroupWithoutAFittingTokenizerIsNotAddedAndTheRouterSaysWhy) {
  const std::string source = GemmaTinyDir() + "/tiny-mqa";
  const std::string gemma3_tokenizer = testing::Gemma3TokenizerDir();
  ASSERT_FALSE(gemma3_tokenizer.empty()) << "the Gemma 3 tokenizer test data is absent";
  for (const bool other_models : {false, true}) {
    const std::string dir =
        ::testing::TempDir() + "/tokenizer_" + std::to_string(::getpid()) + (other_models ? "_g3" : "");
    std::filesystem::create_directories(dir);
    for (const char* file : {"config.json", "model.safetensors"}) {
      std::filesystem::copy_file(source + "/" + file, dir + "/" + file,
                                 std::filesystem::copy_options::overwrite_existing);
    }
    if (other_models) {
      std::filesystem::copy_file(gemma3_tokenizer + "/tokenizer.model", dir + "/tokenizer.model",
                                 std::filesystem::copy_options::overwrite_existing);
    }
    const std::string says = other_models
                                 ? "has 262144 pieces, more than the model's vocabulary (config.json vocab_size) 4096"
                                 : "has no tokenizer: " + dir + "/tokenizer.model is missing or empty";
    OwnWorker worker = StartOwnWorker(dir);
    // Without a group it can serve, the router does not open its port: what it said is what there is to see.
    std::unique_ptr<testing::Process> router =
        testing::Start(ROUTER_BINARY, {"--plaintext", "--workers=127.0.0.1:" + std::to_string(worker.port)});
    for (int i = 0; i < 400 && router->Err().find(says) == std::string::npos; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_NE(router->Err().find(says), std::string::npos) << router->Err();
  }
}

// A worker on a Gemma 2 and one on a Gemma 3 multimodal-layout checkpoint, each behind a router of its own, read
// from config.json alone: greedy generations past the 16-position sliding window equal the reference, the context
// limit is the model's own, and Gemma 3's chat template folds a system message into the first user turn.
TEST(RouterGemma23Test, WorkersOnGemma2And3ServeTheReferenceGreedyTokens) {
  struct Model {
    std::string (*root)();
    std::string name;
  };
  for (const Model& m : {Model{testing::Gemma2TinyDir, "tiny-g2"}, Model{testing::Gemma3TinyDir, "tiny-g3-scaled"}}) {
    const std::string root = m.root();
    ASSERT_FALSE(root.empty()) << "test data for " << m.name << " is absent";
    OwnWorker worker = StartOwnWorker(root + "/" + m.name);
    RouterProcess router = StartRouter({worker.port});
    ASSERT_GT(router.port, 0) << router.process->Err();
    ASSERT_TRUE(router.WaitForHealthyGroups(1)) << m.name << ": " << worker.process->Err();
    v1::ModelInfo info;
    grpc::ClientContext info_ctx;
    ASSERT_TRUE(router.stub->GetModelInfo(&info_ctx, {}, &info).ok());
    EXPECT_EQ(info.max_context(), 512) << m.name;  // max_position_embeddings: no router flag needed

    const auto gens = nlohmann::json::parse(testing::ReadFile(root + "/reference/" + m.name + "/generations.json"));
    for (const auto& g : gens["results"]) {
      v1::GenerateRequest req;
      for (int id : g["prompt_ids"]) req.mutable_input()->mutable_token_ids()->add_ids(id);
      req.mutable_parameters()->set_max_new_tokens(32);
      v1::GenerateResponse resp;
      grpc::ClientContext ctx;
      const grpc::Status s = router.stub->Generate(&ctx, req, &resp);
      ASSERT_TRUE(s.ok()) << m.name << ": " << s.error_message();
      std::vector<int> got;
      for (const auto& t : resp.tokens()) got.push_back(t.id());
      const auto ref = g["generated_ids"].get<std::vector<int>>();
      ASSERT_EQ(got.size(), ref.size()) << m.name << " " << g["prompt"];
      const size_t compare =
          g["first_step_with_margin_below_1e-3"].is_null() ? ref.size() : g["first_step_with_margin_below_1e-3"].get<size_t>();
      EXPECT_TRUE(std::equal(ref.begin(), ref.begin() + compare, got.begin())) << m.name << " " << g["prompt"];
    }
    // A prompt that crosses the window (16) a dozen times, scored through the workers' KV windows (on by default):
    // their local layers keep only the window, and each row carries its local block table.
    const auto scores = nlohmann::json::parse(testing::ReadFile(root + "/reference/" + m.name + "/scores.json"));
    const auto& rand200 = scores["prompts"][2];
    v1::ScoreRequest score;
    for (int id : rand200["ids"]) score.mutable_input()->mutable_token_ids()->add_ids(id);
    v1::ScoreResponse scored;
    grpc::ClientContext score_ctx;
    ASSERT_TRUE(router.stub->Score(&score_ctx, score, &scored).ok()) << m.name;
    const auto want = rand200["token_logprobs"].get<std::vector<double>>();
    ASSERT_EQ(scored.logprobs_size(), static_cast<int>(want.size())) << m.name;
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(scored.logprobs(i), want[i], 1e-4) << m.name << " " << i;

    // The chat template: Gemma 3 folds the system message; Gemma 2's template refuses it.
    v1::GenerateRequest chat;
    auto* sys = chat.mutable_input()->mutable_chat()->add_messages();
    sys->set_role("system");
    sys->set_content("Answer briefly.");
    auto* user = chat.mutable_input()->mutable_chat()->add_messages();
    user->set_role("user");
    user->set_content("What is Gemma?");
    chat.mutable_parameters()->set_max_new_tokens(8);
    v1::GenerateResponse chat_resp;
    grpc::ClientContext chat_ctx;
    const grpc::Status chat_status = router.stub->Generate(&chat_ctx, chat, &chat_resp);
    if (m.name == "tiny-g2") {
      EXPECT_EQ(chat_status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_NE(chat_status.error_message().find("no system role"), std::string::npos) << chat_status.error_message();
      continue;
    }
    ASSERT_TRUE(chat_status.ok()) << chat_status.error_message();
    v1::GenerateRequest folded;
    folded.mutable_input()->set_text(
        "<start_of_turn>user\nAnswer briefly.\n\nWhat is Gemma?<end_of_turn>\n<start_of_turn>model\n");
    folded.mutable_parameters()->set_max_new_tokens(8);
    v1::GenerateResponse folded_resp;
    grpc::ClientContext folded_ctx;
    ASSERT_TRUE(router.stub->Generate(&folded_ctx, folded, &folded_resp).ok());
    ASSERT_GT(chat_resp.tokens_size(), 0);
    ASSERT_EQ(chat_resp.tokens_size(), folded_resp.tokens_size());
    for (int i = 0; i < chat_resp.tokens_size(); ++i) {
      EXPECT_EQ(chat_resp.tokens(i).id(), folded_resp.tokens(i).id()) << "token " << i;
    }
  }
}

}  // namespace
}  // namespace gemma
