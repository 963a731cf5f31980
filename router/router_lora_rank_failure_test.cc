// LoRA adapters that some workers cannot read. One follower of a tensor-parallel group: the requests using it fail
// naming the rank and the file, every other request runs on, the group stays healthy, and once the file is fixed
// the adapter serves its reference tokens. One of two groups: the load is refused and no group keeps it. One of two
// groups down: the load goes to the other, requests naming the adapter go there alone, and loading again once the
// group is back brings it up to date.
//
// Ranks read an adapter's folder as the path the router was given; a relative path is read from each rank's working
// directory, which is how this test gives rank 1 alone a corrupt copy.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <future>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "router/router_test_support.h"

namespace gemma {
namespace {

namespace fs = std::filesystem;


// A worker rank of a group of `world` started in `cwd`.
std::unique_ptr<testing::Process> StartRankIn(const std::string& cwd, int rank, int port, const std::string& peer,
                                              int world = 2) {
  std::string command = "cd '" + cwd + "' && exec '" + std::string(WORKER_BINARY) + "'";
  for (const std::string& flag : std::vector<std::string>{
           "--model=" + GemmaTinyDir() + "/tiny-mqa", "--rank=" + std::to_string(rank),
           "--world_size=" + std::to_string(world), "--peer_port=" + peer, "--leader=127.0.0.1:" + peer,
           "--port=" + std::to_string(port), "--timeout_ms=2000", "--threads=1", "--kv_cache_mb=16"}) {
    command += " '" + flag + "'";
  }
  return testing::Start("/bin/sh", {"-c", command});
}

// Writes `dir` as a copy of `adapter` whose weights file is cut in half (its config as it is).
void WriteTruncatedCopy(const std::string& adapter, const fs::path& dir) {
  fs::create_directories(dir);
  fs::copy_file(adapter + "/adapter_config.json", dir / "adapter_config.json");
  const std::string weights = testing::ReadFile(adapter + "/adapter_model.safetensors");
  std::ofstream(dir / "adapter_model.safetensors", std::ios::binary) << weights.substr(0, weights.size() / 2);
}

grpc::Status Load(v1::Admin::Stub& admin, const std::string& name, const std::string& path, v1::Adapter* loaded) {
  grpc::ClientContext ctx;
  v1::LoadAdapterRequest load;
  load.set_name(name);
  load.set_path(path);
  return admin.LoadAdapter(&ctx, load, loaded);
}

absl::StatusCode Generate(v1::Gemma::Stub& stub, const v1::GenerateRequest& req, v1::GenerateResponse* resp,
                          std::string* message) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  const grpc::Status s = stub.Generate(&ctx, req, resp);
  *message = s.error_message();
  return static_cast<absl::StatusCode>(s.error_code());
}

TEST(RouterLoraRankFailureTest, OneRankThatCannotReadTheAdapterFailsOnlyItsRequests) {
  const std::string lora = testing::GemmaLoraTinyDir();
  ASSERT_FALSE(lora.empty()) << "gemma-lora-tiny is absent";
  const std::string adapter = lora + "/mqa-r8-rslora";
  const fs::path root = fs::path(::testing::TempDir()) / ("lora_rank_failure_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "rank0");
  fs::create_directory_symlink(adapter, root / "rank0" / "ad");
  WriteTruncatedCopy(adapter, root / "rank1" / "ad");  // rank 1's copy is cut short

  const int port = testing::FreePort();
  const std::string peer = std::to_string(testing::FreePort());
  auto rank0 = StartRankIn((root / "rank0").string(), 0, port, peer);
  auto rank1 = StartRankIn((root / "rank1").string(), 1, testing::FreePort(), peer);
  auto router = StartRouter({port});
  ASSERT_GT(router.port, 0) << router.process->Err();
  ASSERT_TRUE(router.WaitForHealthyGroups(1)) << router.process->Err() << rank0->Err() << rank1->Err();
  auto admin = v1::Admin::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(router.port), grpc::InsecureChannelCredentials()));
  {
    v1::Adapter loaded;
    const grpc::Status s = Load(*admin, "rs", "ad", &loaded);  // relative: each rank's own folder
    ASSERT_TRUE(s.ok()) << s.error_message() << rank0->Err();
  }

  const auto reference = nlohmann::json::parse(
      testing::ReadFile(lora + "/reference/mqa-r8-rslora/generations.json"))["results"][0];
  const auto prompt = reference["prompt_ids"].get<std::vector<int>>();
  const auto want = reference["generated_ids"].get<std::vector<int>>();
  v1::GenerateRequest adapted = Ids(prompt, static_cast<int>(want.size()));
  adapted.set_adapter("rs");
  const v1::GenerateRequest base = Ids(prompt, static_cast<int>(want.size()));

  // The adapter's request and base requests together, so they meet in steps.
  std::vector<std::future<std::pair<absl::StatusCode, std::string>>> calls;
  for (int i = 0; i < 4; ++i) {
    calls.push_back(std::async(std::launch::async, [&, i] {
      v1::GenerateResponse resp;
      std::string message;
      const absl::StatusCode code = Generate(*router.stub, i == 0 ? adapted : base, &resp, &message);
      return std::make_pair(code, message);
    }));
  }
  const auto [code, message] = calls[0].get();
  EXPECT_EQ(code, absl::StatusCode::kInvalidArgument) << message;
  EXPECT_NE(message.find("rank 1"), std::string::npos) << message;
  EXPECT_NE(message.find("adapter_model.safetensors"), std::string::npos) << message;
  for (size_t i = 1; i < calls.size(); ++i) {
    const auto [base_code, base_message] = calls[i].get();
    EXPECT_EQ(base_code, absl::StatusCode::kOk) << "base request " << i << ": " << base_message;
  }
  EXPECT_EQ(router.HealthyGroups(), 1) << "one rank's adapter is no reason to fail the group";
  EXPECT_EQ(rank1->WaitExit(std::chrono::milliseconds(0)), -1) << rank1->Err();
  {  // The same again: refused the same way, not half-loaded.
    v1::GenerateResponse resp;
    std::string again;
    EXPECT_EQ(Generate(*router.stub, adapted, &resp, &again), absl::StatusCode::kInvalidArgument) << again;
    EXPECT_NE(again.find("rank 1"), std::string::npos) << again;
  }

  // Fixed on rank 1: the next request reads it there and serves the reference.
  fs::remove_all(root / "rank1" / "ad");
  fs::create_directory_symlink(adapter, root / "rank1" / "ad");
  v1::GenerateResponse resp;
  std::string fixed;
  ASSERT_EQ(Generate(*router.stub, adapted, &resp, &fixed), absl::StatusCode::kOk) << fixed;
  EXPECT_EQ(TokenIds(resp), want);
  fs::remove_all(root);
}

TEST(RouterLoraRankFailureTest, AGroupThatRefusesTheAdapterLeavesNoGroupHoldingIt) {
  const std::string lora = testing::GemmaLoraTinyDir();
  ASSERT_FALSE(lora.empty()) << "gemma-lora-tiny is absent";
  const std::string adapter = lora + "/mqa-r8-rslora";
  const fs::path root = fs::path(::testing::TempDir()) / ("lora_group_refusal_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "a");
  fs::create_directory_symlink(adapter, root / "a" / "ad");
  WriteTruncatedCopy(adapter, root / "b" / "ad");  // group b's copy cannot be read

  const int port_a = testing::FreePort(), port_b = testing::FreePort();
  auto group_a = StartRankIn((root / "a").string(), 0, port_a, std::to_string(testing::FreePort()), 1);
  auto group_b = StartRankIn((root / "b").string(), 0, port_b, std::to_string(testing::FreePort()), 1);
  auto router = StartRouter({port_a, port_b});
  ASSERT_GT(router.port, 0) << router.process->Err();
  ASSERT_TRUE(router.WaitForHealthyGroups(2)) << router.process->Err() << group_a->Err() << group_b->Err();
  auto admin = v1::Admin::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(router.port), grpc::InsecureChannelCredentials()));
  auto listed = [&] {
    grpc::ClientContext ctx;
    v1::ListAdaptersResponse list;
    EXPECT_TRUE(admin->ListAdapters(&ctx, v1::ListAdaptersRequest(), &list).ok());
    return list.adapters_size();
  };

  v1::Adapter loaded;
  const grpc::Status refused = Load(*admin, "rs", "ad", &loaded);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << refused.error_message();
  EXPECT_NE(refused.error_message().find("adapter_model.safetensors"), std::string::npos) << refused.error_message();
  EXPECT_NE(refused.error_message().find("not loaded"), std::string::npos) << refused.error_message();
  EXPECT_EQ(listed(), 0) << "the group that took it must have unloaded it again";
  {  // no request reaches it on the group that had read it
    const auto reference = nlohmann::json::parse(
        testing::ReadFile(lora + "/reference/mqa-r8-rslora/generations.json"))["results"][0];
    v1::GenerateRequest adapted = Ids(reference["prompt_ids"].get<std::vector<int>>(), 4);
    adapted.set_adapter("rs");
    for (int i = 0; i < 2; ++i) {
      v1::GenerateResponse resp;
      std::string message;
      EXPECT_NE(Generate(*router.stub, adapted, &resp, &message), absl::StatusCode::kOk);
      EXPECT_NE(message.find("\"rs\" is not loaded"), std::string::npos) << message;
    }
  }

  // Fixed on group b: loaded on both; loaded again, it already exists everywhere.
  fs::remove_all(root / "b" / "ad");
  fs::create_directory_symlink(adapter, root / "b" / "ad");
  const grpc::Status fixed = Load(*admin, "rs", "ad", &loaded);
  ASSERT_TRUE(fixed.ok()) << fixed.error_message();
  EXPECT_EQ(loaded.groups(), 2);
  EXPECT_EQ(listed(), 1);
  EXPECT_EQ(Load(*admin, "rs", "ad", &loaded).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(router.HealthyGroups(), 2);
  fs::remove_all(root);
}

TEST(RouterLoraRankFailureTest, AGroupThatIsDownIsPassedOverAndLoadingAgainBringsItUpToDate) {
  const std::string lora = testing::GemmaLoraTinyDir();
  ASSERT_FALSE(lora.empty()) << "gemma-lora-tiny is absent";
  const std::string adapter = lora + "/mqa-r8-rslora";
  const fs::path root = fs::path(::testing::TempDir()) / ("lora_group_down_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  fs::create_directory_symlink(adapter, root / "ad");

  const int port_a = testing::FreePort(), port_b = testing::FreePort();
  auto group_a = StartRankIn(root.string(), 0, port_a, std::to_string(testing::FreePort()), 1);
  auto group_b = StartRankIn(root.string(), 0, port_b, std::to_string(testing::FreePort()), 1);
  auto router = StartRouter({port_a, port_b});
  ASSERT_GT(router.port, 0) << router.process->Err();
  ASSERT_TRUE(router.WaitForHealthyGroups(2)) << router.process->Err() << group_a->Err() << group_b->Err();
  auto admin = v1::Admin::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(router.port), grpc::InsecureChannelCredentials()));

  group_b->Kill();
  ASSERT_TRUE(router.WaitForHealthyGroups(1)) << router.process->Err();
  v1::Adapter loaded;
  const grpc::Status partial = Load(*admin, "rs", "ad", &loaded);
  ASSERT_TRUE(partial.ok()) << "a group that is down must not block the others: " << partial.error_message();
  EXPECT_EQ(loaded.groups(), 1);

  const auto reference = nlohmann::json::parse(
      testing::ReadFile(lora + "/reference/mqa-r8-rslora/generations.json"))["results"][0];
  const auto want = reference["generated_ids"].get<std::vector<int>>();
  v1::GenerateRequest adapted = Ids(reference["prompt_ids"].get<std::vector<int>>(), static_cast<int>(want.size()));
  adapted.set_adapter("rs");
  auto serve_all = [&](const char* when) {
    std::vector<std::future<std::pair<absl::StatusCode, std::string>>> calls;
    for (int i = 0; i < 4; ++i) {
      calls.push_back(std::async(std::launch::async, [&] {
        v1::GenerateResponse resp;
        std::string message;
        absl::StatusCode code = Generate(*router.stub, adapted, &resp, &message);
        if (code == absl::StatusCode::kOk && TokenIds(resp) != want) message = "tokens differ from the reference";
        return std::make_pair(code, message);
      }));
    }
    for (auto& c : calls) {
      const auto [code, message] = c.get();
      EXPECT_EQ(code, absl::StatusCode::kOk) << when << ": " << message;
      EXPECT_TRUE(message.empty()) << when << ": " << message;
    }
  };
  serve_all("one group down");

  // Back without the adapter: requests naming it still go to the group holding it.
  group_b = StartRankIn(root.string(), 0, port_b, std::to_string(testing::FreePort()), 1);
  ASSERT_TRUE(router.WaitForHealthyGroups(2)) << router.process->Err() << group_b->Err();
  serve_all("the group back without the adapter");

  const grpc::Status again = Load(*admin, "rs", "ad", &loaded);
  ASSERT_TRUE(again.ok()) << again.error_message();
  EXPECT_EQ(loaded.groups(), 2);
  serve_all("loaded on both");
  fs::remove_all(root);
}

}  // namespace
}  // namespace gemma
