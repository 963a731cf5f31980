// LoRA adapters served: loaded at a worker's start and through the Admin
// service, named per request, mixed with base-model requests in one batch, on
// one rank and across a tensor-parallel group; against the references of
// gemma-lora-tiny.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <future>
#include <memory>
#include <thread>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "router/router_test_support.h"

namespace gemma {
namespace {

std::string LoraDir() {
  const std::string dir = testing::GemmaLoraTinyDir();
  EXPECT_FALSE(dir.empty())
      << "gemma-lora-tiny is absent: the served LoRA checks cannot run";
  return dir;
}

nlohmann::json Generations(const std::string& adapter) {
  return nlohmann::json::parse(testing::ReadFile(
      LoraDir() + "/reference/" + adapter + "/generations.json"));
}

absl::StatusCode Generate(v1::Gemma::Stub& stub, const v1::GenerateRequest& req,
                          v1::GenerateResponse* resp,
                          std::string* message = nullptr) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  grpc::Status s = stub.Generate(&ctx, req, resp);
  if (message != nullptr) *message = s.error_message();
  return static_cast<absl::StatusCode>(s.error_code());
}

// Every reference prompt, greedy, with `adapter` (or none), all at once: the
// router batches them together.
void ExpectReferenceGenerations(v1::Gemma::Stub& stub,
                                const std::string& adapter,
                                const std::string& reference) {
  const auto gens = Generations(reference);
  std::vector<std::future<std::vector<int>>> adapted, base;
  for (const auto& g : gens["results"]) {
    v1::GenerateRequest req = Ids(g["prompt_ids"].get<std::vector<int>>(),
                                  static_cast<int>(g["generated_ids"].size()));
    req.set_adapter(adapter);
    for (auto* list : {&adapted, &base}) {
      list->push_back(std::async(std::launch::async, [&stub, req, list, &base] {
        v1::GenerateRequest r = req;
        if (list == &base) r.clear_adapter();
        v1::GenerateResponse resp;
        std::string message;
        EXPECT_EQ(Generate(stub, r, &resp, &message), absl::StatusCode::kOk)
            << message;
        return TokenIds(resp);
      }));
    }
  }
  for (size_t i = 0; i < adapted.size(); ++i) {
    const auto want =
        gens["results"][i]["generated_ids"].get<std::vector<int>>();
    EXPECT_EQ(adapted[i].get(), want)
        << adapter << " " << gens["results"][i]["prompt"];
    EXPECT_NE(base[i].get(), want)
        << "the base model gave the adapter's tokens";
  }
}

TEST(RouterLoraTest, AdaptersLoadedAtStartAndAtRunTimeServeTheirReferences) {
  const std::string lora = LoraDir();
  ASSERT_FALSE(lora.empty());
  auto worker = StartOwnWorker(GemmaTinyDir() + "/tiny-mha",
                               {"--lora=all=" + lora + "/mha-r8-all"});
  const int metrics_port = testing::FreePort();
  auto router = StartRouter({worker.port}, {"--metrics_port=" + std::to_string(metrics_port)});
  ASSERT_TRUE(router.WaitForHealthyGroups(1));
  {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    ASSERT_TRUE(router.stub->GetModelInfo(&ctx, {}, &info).ok());
    ASSERT_EQ(info.adapters_size(), 1);
    EXPECT_EQ(info.adapters(0).name(), "all");
    EXPECT_EQ(info.adapters(0).rank(), 8);
    EXPECT_FLOAT_EQ(info.adapters(0).scaling(), 2.0f);
  }
  ExpectReferenceGenerations(*router.stub, "all", "mha-r8-all");
  const size_t prompts = Generations("mha-r8-all")["results"].size();
  // Requests of an adapter are counted under its name: every reference prompt, with its 32 tokens.
  const std::string m = testing::HttpGet(metrics_port, "/metrics");
  EXPECT_EQ(Sample(m, "gemma_router_adapter_requests_total{adapter=\"all\",outcome=\"completed\"}"), prompts);
  EXPECT_EQ(Sample(m, "gemma_router_adapter_tokens_total{adapter=\"all\",kind=\"generated\"}"), 32.0 * prompts);

  auto admin = v1::Admin::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(router.port),
                          grpc::InsecureChannelCredentials()));
  v1::LoadAdapterRequest load;
  load.set_name("qv");
  load.set_path(lora + "/mha-r4-qv-f32");
  {
    grpc::ClientContext ctx;
    v1::Adapter loaded;
    grpc::Status s = admin->LoadAdapter(&ctx, load, &loaded);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(loaded.groups(), 1);
    EXPECT_EQ(loaded.rank(), 4);
  }
  ExpectReferenceGenerations(*router.stub, "qv", "mha-r4-qv");
  {  // the same name twice
    grpc::ClientContext ctx;
    v1::Adapter loaded;
    EXPECT_EQ(admin->LoadAdapter(&ctx, load, &loaded).error_code(),
              grpc::StatusCode::ALREADY_EXISTS);
  }
  {  // an adapter of another model: its k_proj does not fit
    grpc::ClientContext ctx;
    v1::LoadAdapterRequest bad;
    bad.set_name("mqa");
    bad.set_path(lora + "/mqa-r8-rslora");
    v1::Adapter loaded;
    grpc::Status s = admin->LoadAdapter(&ctx, bad, &loaded);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("adapter_model.safetensors"),
              std::string::npos)
        << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    v1::UnloadAdapterRequest unload;
    unload.set_name("qv");
    v1::UnloadAdapterResponse r;
    ASSERT_TRUE(admin->UnloadAdapter(&ctx, unload, &r).ok());
  }
  v1::GenerateRequest req = Ids({2, 3791, 323}, 4);
  req.set_adapter("qv");
  v1::GenerateResponse resp;
  std::string message;
  EXPECT_EQ(Generate(*router.stub, req, &resp, &message),
            absl::StatusCode::kInvalidArgument);
  EXPECT_NE(message.find("\"qv\" is not loaded"), std::string::npos) << message;
}

// An adapter load held up where the worker reads its config: adapter_config.json is a pipe (as a slow disk would
// hold it), and the load goes on once the test writes the config into it. The weights, when given, are a real
// adapter's.
class HeldLoad {
 public:
  HeldLoad(int router_port, const std::string& name, const std::string& weights_from) {
    // A worker that gave up on the pipe makes Release's write fail (EPIPE, reported), not kill the test.
    std::signal(SIGPIPE, SIG_IGN);
    dir_ = ::testing::TempDir() + "/held-adapter-" + name + "-" + std::to_string(getpid());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    if (!weights_from.empty()) {
      std::filesystem::copy_file(weights_from + "/adapter_model.safetensors", dir_ + "/adapter_model.safetensors");
    }
    const std::string config = dir_ + "/adapter_config.json";
    if (mkfifo(config.c_str(), 0600) != 0) {
      ADD_FAILURE() << "mkfifo " << config << ": " << strerror(errno);
      return;
    }
    admin_ = v1::Admin::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(router_port),
                                                    grpc::InsecureChannelCredentials()));
    load_ = std::async(std::launch::async, [this, name] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      v1::LoadAdapterRequest req;
      req.set_name(name);
      req.set_path(dir_);
      v1::Adapter loaded;
      return admin_->LoadAdapter(&ctx, req, &loaded);
    });
    // The worker opens the pipe for reading and waits there for a writer.
    for (int i = 0; i < 200 && writer_ < 0; ++i) {
      writer_ = open(config.c_str(), O_WRONLY | O_NONBLOCK);  // fails (ENXIO) until a reader has it open
      if (writer_ < 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (writer_ < 0) ADD_FAILURE() << "the worker never opened the adapter's config";
  }
  // The load's thread holds `this`.
  HeldLoad(const HeldLoad&) = delete;
  HeldLoad& operator=(const HeldLoad&) = delete;
  // Released however the test ends: not an adapter config, so the load fails.
  ~HeldLoad() {
    if (writer_ >= 0) Release("{}");
    if (load_.valid()) load_.wait();
    std::filesystem::remove_all(dir_);
  }
  bool held() const { return writer_ >= 0; }
  bool still_loading() const { return load_.wait_for(std::chrono::seconds(0)) == std::future_status::timeout; }
  // Writes `config` into the pipe and waits for the load's outcome.
  grpc::Status Release(const std::string& config) {
    EXPECT_EQ(write(writer_, config.data(), config.size()), static_cast<ssize_t>(config.size()))
        << "writing the adapter's config into its pipe: " << strerror(errno);
    close(writer_);
    writer_ = -1;
    return load_.get();
  }

 private:
  std::string dir_;
  std::unique_ptr<v1::Admin::Stub> admin_;
  std::future<grpc::Status> load_;
  int writer_ = -1;
};

// An adapter load that takes long holds up no request: the router makes the load's RPCs outside the lock that
// places requests.
TEST(RouterLoraTest, ASlowAdapterLoadHoldsUpNoRequest) {
  auto worker = StartOwnWorker(GemmaTinyDir() + "/tiny-mha");
  auto router = StartRouter({worker.port});
  ASSERT_TRUE(router.WaitForHealthyGroups(1));
  HeldLoad load(router.port, "slow", "");
  ASSERT_TRUE(load.held());
  v1::GenerateResponse resp;
  std::string message;
  EXPECT_EQ(Generate(*router.stub, Ids({2, 3791, 323}, 4), &resp, &message), absl::StatusCode::kOk)
      << "a request waited on the adapter load: " << message;
  EXPECT_EQ(TokenIds(resp).size(), 4u);
  EXPECT_TRUE(load.still_loading()) << "the load ended early";
  const grpc::Status loaded = load.Release("{}");
  EXPECT_EQ(loaded.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(loaded.error_message().find("adapter_config.json"), std::string::npos) << loaded.error_message();
}

// A request naming an adapter while it loads is refused at once as not loaded (it never waits, nor runs on a group
// holding half of it), and once the load is over the adapter serves its references.
TEST(RouterLoraTest, ARequestNamingAnAdapterMidLoadIsRefusedUntilTheLoadEnds) {
  const std::string lora = LoraDir();
  ASSERT_FALSE(lora.empty());
  auto worker = StartOwnWorker(GemmaTinyDir() + "/tiny-mha");
  auto router = StartRouter({worker.port});
  ASSERT_TRUE(router.WaitForHealthyGroups(1));
  HeldLoad load(router.port, "late", lora + "/mha-r8-all");
  ASSERT_TRUE(load.held());
  v1::GenerateRequest req = Ids({2, 3791, 323}, 4);
  req.set_adapter("late");
  v1::GenerateResponse resp;
  std::string message;
  EXPECT_EQ(Generate(*router.stub, req, &resp, &message), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(message.find("\"late\" is not loaded"), std::string::npos) << message;
  EXPECT_TRUE(load.still_loading()) << "the load ended early";
  const grpc::Status loaded = load.Release(testing::ReadFile(lora + "/mha-r8-all/adapter_config.json"));
  ASSERT_TRUE(loaded.ok()) << loaded.error_message();
  ExpectReferenceGenerations(*router.stub, "late", "mha-r8-all");
}

TEST(RouterLoraTest, ATensorParallelGroupReadsItsSlicesOnEveryRank) {
  const std::string lora = LoraDir();
  ASSERT_FALSE(lora.empty());
  TpGroup group = StartTpGroup(2);  // tiny-mqa
  auto router = StartRouter({group.port});
  ASSERT_TRUE(router.WaitForHealthyGroups(1));
  auto admin = v1::Admin::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(router.port),
                          grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::LoadAdapterRequest load;
  load.set_name("rs");
  load.set_path(lora + "/mqa-r8-rslora");
  v1::Adapter loaded;
  grpc::Status s = admin->LoadAdapter(&ctx, load, &loaded);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_NEAR(loaded.scaling(), 11.3137085, 1e-5);
  ExpectReferenceGenerations(*router.stub, "rs", "mqa-r8-rslora");
}

}  // namespace
}  // namespace gemma
