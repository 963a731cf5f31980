// The CUDA backend refuses Gemma 2 and 3 features it does not compute, on machines with and without a GPU.
#include "shard/cuda/cuda_model_support.h"

#include "gtest/gtest.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/cuda/cuda_backend.h"
#include "shard/model/published_shapes.h"
#include "tests/testdata.h"

namespace gemma {
namespace {

TEST(CudaModelSupportTest, Gemma1IsSupported) {
  EXPECT_TRUE(CheckCudaModelSupport(Gemma2BShape()).ok());
  EXPECT_TRUE(CheckCudaModelSupport(TinyShape()).ok());
}

TEST(CudaModelSupportTest, EveryGemma23ShapeIsRefusedNamingItsFeatures) {
  for (const auto& [name, config] : PublishedGemma23Shapes()) {
    const absl::Status s = CheckCudaModelSupport(config);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << name;
    EXPECT_NE(s.message().find("sliding-window attention"), std::string::npos) << name << ": " << s;
    EXPECT_NE(s.message().find("sandwich norms"), std::string::npos) << name << ": " << s;
    const bool g2 = config.family == ModelFamily::kGemma2;
    EXPECT_EQ(s.message().find("soft-capping") != std::string::npos, g2) << name << ": " << s;
    EXPECT_EQ(s.message().find("QK-norm") != std::string::npos, !g2) << name << ": " << s;
    EXPECT_EQ(s.message().find("linear RoPE scaling") != std::string::npos, config.rope_global_scale != 1.0f)
        << name << ": " << s;
  }
}

TEST(CudaModelSupportTest, CreatingTheBackendForATinyGemma2IsRefusedBeforeAnyDevice) {
  const std::string dir = testing::Gemma2TinyDir();
  ASSERT_FALSE(dir.empty()) << "gemma2-tiny test data is absent";
  auto ckpt = Checkpoint::Open(dir + "/tiny-g2-qscale");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto weights = ModelWeights::Load(std::shared_ptr<const Checkpoint>(std::move(*ckpt)));
  ASSERT_TRUE(weights.ok()) << weights.status();
  KvCacheOptions kv;
  kv.num_blocks = 8;
  auto b = CreateCudaBackend(std::shared_ptr<const ModelWeights>(std::move(*weights)), kv, {});
  ASSERT_FALSE(b.ok());
  if (!CudaBackendBuilt()) {
    EXPECT_EQ(b.status().code(), absl::StatusCode::kUnimplemented) << b.status();
    return;
  }
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition) << b.status();
  EXPECT_NE(b.status().message().find("query_pre_attn_scalar 24"), std::string::npos) << b.status();
  EXPECT_NE(b.status().message().find("--device cpu"), std::string::npos) << b.status();
}

// More ranks than query heads replicates heads (the CPU backend adds each head's output once); the CUDA kernels
// were never checked that way, so the backend refuses it.
TEST(CudaModelSupportTest, QueryHeadsReplicatedAcrossRanksAreRefused) {
  auto ckpt = Checkpoint::Open(testing::GemmaTinyDir() + "/tiny-mqa");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::shared_ptr<const Checkpoint> shared(std::move(*ckpt));
  auto tp = TensorParallel::Create(shared->config(), 0, 2 * shared->config().num_heads);
  ASSERT_TRUE(tp.ok()) << tp.status();
  ASSERT_EQ(tp->q_head_replicas, 2);
  auto weights = ModelWeights::Load(shared, *tp);
  ASSERT_TRUE(weights.ok()) << weights.status();
  KvCacheOptions kv;
  kv.num_blocks = 8;
  auto b = CreateCudaBackend(std::shared_ptr<const ModelWeights>(std::move(*weights)), kv, {});
  ASSERT_FALSE(b.ok());
  if (!CudaBackendBuilt()) return;
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition) << b.status();
  EXPECT_NE(b.status().message().find("query heads replicated across ranks"), std::string::npos) << b.status();
}

}  // namespace
}  // namespace gemma
