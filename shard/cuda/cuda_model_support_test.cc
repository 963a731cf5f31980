// What the CUDA backend refuses before any device, on machines with and without a GPU: every published Gemma
// shape is accepted; head sizes the kernels lack and query heads replicated across ranks are refused.
#include "shard/cuda/cuda_model_support.h"

#include "gtest/gtest.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/cuda/cuda_backend.h"
#include "shard/model/published_shapes.h"
#include "tests/testdata.h"

namespace gemma {
namespace {

TensorParallel Single(const ModelConfig& c) {
  auto tp = TensorParallel::Create(c, 0, 1);
  EXPECT_TRUE(tp.ok()) << tp.status();
  return *tp;
}

TEST(CudaModelSupportTest, EveryPublishedShapeIsSupported) {
  for (const ModelConfig& c : {Gemma2BShape(), Gemma7BShape(), TinyShape()}) {
    EXPECT_TRUE(CheckCudaModelSupport(c, Single(c)).ok()) << c.ShapeName();
  }
  for (const auto& [name, config] : PublishedGemma23Shapes()) {
    const absl::Status s = CheckCudaModelSupport(config, Single(config));
    EXPECT_TRUE(s.ok()) << name << ": " << s;
    // At every degree that divides the query heads, as the 27B models are sharded.
    for (int world : {2, 4, 8}) {
      if (config.num_heads % world != 0) continue;
      auto tp = TensorParallel::Create(config, world - 1, world);
      ASSERT_TRUE(tp.ok()) << name << " TP " << world << ": " << tp.status();
      EXPECT_TRUE(CheckCudaModelSupport(config, *tp).ok()) << name << " TP " << world;
    }
  }
}

TEST(CudaModelSupportTest, AHeadSizeTheKernelsLackIsRefusedNamingWhatIsAllowed) {
  ModelConfig c = TinyShape();
  c.head_dim = 512;
  const absl::Status s = CheckCudaModelSupport(c, Single(c));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("head_dim 512"), std::string::npos) << s;
  EXPECT_NE(s.message().find("at most 256"), std::string::npos) << s;
}

// Without a device the tiny Gemma 2 gets only the device's absence as its error (or, without CUDA in the build,
// the build's): nothing of the model itself is refused any more.
TEST(CudaModelSupportTest, ATinyGemma2IsRefusedOnlyForWantOfADevice) {
  if (CudaDeviceCount() > 0) GTEST_SKIP() << "a device is present: the GPU tests create it";
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
  EXPECT_NE(b.status().message().find("not present"), std::string::npos) << b.status();
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
  const absl::Status s = CheckCudaModelSupport(shared->config(), *tp);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("query heads replicated across ranks"), std::string::npos) << s;
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
