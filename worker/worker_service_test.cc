// The Worker service in process over a backend that reports a LoRA capacity: what GetModelInfo says, and which
// adapters LoadAdapter refuses before registering them.
#include "worker/worker_service.h"

#include <string>

#include "gtest/gtest.h"
#include "shard/collective/collective.h"

namespace gemma {
namespace {

// Runs nothing; holds adapters up to `capacity`, as a GPU's slots do.
class CapacityBackend final : public Backend {
 public:
  explicit CapacityBackend(LoraCapacity capacity) : capacity_(capacity) {}
  const ModelConfig& config() const override { return config_; }
  int num_kv_blocks() const override { return 8; }
  int kv_block_size() const override { return 16; }
  LoraCapacity lora_capacity() const override { return capacity_; }
  absl::Status Forward(std::span<const SequenceStep>, StepLogits*) override {
    return absl::UnimplementedError("no steps here");
  }
  StepTimings last_timings() const override { return {}; }

 private:
  ModelConfig config_;
  LoraCapacity capacity_;
};

// An adapter of the rank its folder names ("r32" is rank 32), read without files.
std::shared_ptr<AdapterStore> RankedAdapters() {
  return std::make_shared<AdapterStore>(
      [](const std::string& dir) -> absl::StatusOr<std::shared_ptr<LoraAdapter>> {
        auto a = std::make_shared<LoraAdapter>();
        a->rank = std::stoi(dir.substr(1));
        return a;
      },
      4);
}

WorkerService ServiceWith(LoraCapacity capacity, std::shared_ptr<AdapterStore> adapters) {
  return WorkerService(
      std::make_unique<LeaderBackend>(std::make_unique<CapacityBackend>(capacity), MakeSingleRankCollective()),
      worker::v1::ModelInfo(), nullptr, std::move(adapters));
}

grpc::Status Load(WorkerService& service, const std::string& name, const std::string& dir) {
  worker::v1::LoadAdapterRequest request;
  request.set_name(name);
  request.set_path(dir);
  worker::v1::AdapterInfo info;
  grpc::ServerContext ctx;
  return service.LoadAdapter(&ctx, &request, &info);
}

TEST(WorkerServiceTest, ModelInfoReportsTheBackendsLoraCapacity) {
  WorkerService service = ServiceWith({16, 3}, RankedAdapters());
  worker::v1::ModelInfo info;
  grpc::ServerContext ctx;
  ASSERT_TRUE(service.GetModelInfo(&ctx, nullptr, &info).ok());
  EXPECT_EQ(info.max_lora_rank(), 16);
  EXPECT_EQ(info.max_loras_per_step(), 3);
}

TEST(WorkerServiceTest, LoadAdapterRefusesARankAboveTheBackendsBeforeRegisteringIt) {
  auto adapters = RankedAdapters();
  WorkerService service = ServiceWith({16, 2}, adapters);
  const grpc::Status refused = Load(service, "big", "r32");
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.error_message().find("rank 32"), std::string::npos) << refused.error_message();
  EXPECT_NE(refused.error_message().find("up to 16"), std::string::npos) << refused.error_message();
  EXPECT_NE(refused.error_message().find("--gpu_lora_max_rank"), std::string::npos) << refused.error_message();
  EXPECT_TRUE(adapters->List().empty());  // nothing registered: no id, no step can name it
  EXPECT_TRUE(Load(service, "small", "r16").ok());
  EXPECT_EQ(adapters->List().size(), 1u);
}

TEST(WorkerServiceTest, LoadAdapterWithoutSlotsNamesTheSlotsFlag) {
  auto adapters = RankedAdapters();
  WorkerService service = ServiceWith({0, 0}, adapters);
  const grpc::Status refused = Load(service, "any", "r4");
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.error_message().find("--gpu_lora_slots"), std::string::npos) << refused.error_message();
  EXPECT_TRUE(adapters->List().empty());
}

TEST(WorkerServiceTest, ADefaultBackendTakesAnyRankTheLoaderReads) {
  WorkerService service = ServiceWith(LoraCapacity{}, RankedAdapters());
  EXPECT_TRUE(Load(service, "top", "r64").ok());
}

}  // namespace
}  // namespace gemma
