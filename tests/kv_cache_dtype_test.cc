// Compact KV caches on the CPU (--kv_cache_dtype bf16 | int8) over every tiny checkpoint: the reference prompts'
// scores stay near the f32 cache's (and Google's references), results do not depend on how the prompt was cut
// into steps (rows are rounded once, when written), and the same bytes hold 2x / about 4x the positions.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "gtest/gtest.h"
#include "tests/reference_helpers.h"
#include "tests/testdata.h"

namespace gemma::testing {
namespace {

struct DtypeBound {
  KvCacheDtype dtype;
  double logprob_bound;  // on prompt log-probs against the f32 cache
};

// Measured largest changes: bf16 up to 3.6e-3, int8 up to 1.5e-2; tiny-g2-qscale, whose soft-capped, sharp
// logits amplify any rounding (its README's bound is 10x the others'), 0.11 and 0.50: its bounds are 50x.
constexpr DtypeBound kDtypes[] = {{KvCacheDtype::kBF16, 1e-2}, {KvCacheDtype::kInt8, 5e-2}};

std::vector<float> Scores(Backend* backend, const std::vector<int32_t>& prompt, StepBudget budget) {
  SequenceSpec spec;
  spec.prompt = prompt;
  spec.score = true;
  return RunOnEngine(backend, {spec}, budget)[0].prompt_logprobs;
}

class KvCacheDtypeTest : public TinyCheckpointTest {};

TEST_P(KvCacheDtypeTest, ScoresStayNearTheF32CacheAndDoNotDependOnChunking) {
  const auto scores = ReadJson(RefDir() + "/scores.json");
  auto f32 = OpenBackend(ModelDir());
  const double scale = GetParam().tolerance > 1e-4 ? 50 : 1;
  for (const DtypeBound& b : kDtypes) {
    auto compact = OpenBackend(ModelDir(), 4096, false, b.dtype);
    double worst = 0, worst_ref = 0;
    for (const auto& p : scores["prompts"]) {
      const auto prompt = p["ids"].get<std::vector<int32_t>>();
      const std::vector<float> want = Scores(f32.get(), prompt, {});
      const std::vector<float> got = Scores(compact.get(), prompt, {});
      const auto ref = p["token_logprobs"].get<std::vector<double>>();
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < got.size(); ++i) {
        worst = std::max(worst, std::abs(double(got[i]) - want[i]));
        worst_ref = std::max(worst_ref, std::abs(got[i] - ref[i]));
      }
      // Rows are rounded as they are written, each on its own: seven-token steps read back the rows earlier steps
      // wrote and give the one-step scores bit for bit.
      EXPECT_EQ(Scores(compact.get(), prompt, {7, 7}), got) << KvCacheDtypeName(b.dtype) << " " << p["name"];
    }
    std::printf("%s kv %s: largest prompt log-prob change vs the f32 cache %.3g, vs the reference %.3g\n",
                GetParam().name.c_str(), KvCacheDtypeName(b.dtype), worst, worst_ref);
    RecordProperty(std::string("max_logprob_change_") + KvCacheDtypeName(b.dtype), std::to_string(worst));
    EXPECT_LT(worst, b.logprob_bound * scale) << KvCacheDtypeName(b.dtype);
    EXPECT_GT(worst, 0.0) << KvCacheDtypeName(b.dtype) << ": the cache should round something";
  }
}

INSTANTIATE_TEST_SUITE_P(Gemma1, KvCacheDtypeTest, ::testing::ValuesIn(TinyModels()), TinyModelName);
INSTANTIATE_TEST_SUITE_P(Gemma23, KvCacheDtypeTest, ::testing::ValuesIn(Gemma23TinyModels()), TinyModelName);

// The same bytes hold twice (bf16) and nearly four times (int8: a 4-byte scale per head_dim codes) f32's blocks;
// fp8 is the GPU's and is refused by name.
TEST(KvCacheDtypeCapacityTest, TheSameBytesHoldMoreBlocks) {
  ModelConfig c;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 128;
  KvCacheOptions o;
  o.max_bytes = int64_t{64} << 20;
  auto f32 = KvCache::Create(c, o);
  ASSERT_TRUE(f32.ok()) << f32.status();
  o.dtype = KvCacheDtype::kBF16;
  auto bf16 = KvCache::Create(c, o);
  o.dtype = KvCacheDtype::kInt8;
  auto int8 = KvCache::Create(c, o);
  ASSERT_TRUE(bf16.ok() && int8.ok());
  EXPECT_EQ(bf16->num_blocks(), 2 * f32->num_blocks());
  EXPECT_EQ(int8->BytesPerBlock(), f32->BytesPerBlock() / 4 + f32->block_stride() / 128 * 4);
  EXPECT_GE(int8->num_blocks(), 3.8 * f32->num_blocks());
  o.dtype = KvCacheDtype::kFp8;
  auto fp8 = KvCache::Create(c, o);
  ASSERT_FALSE(fp8.ok());
  EXPECT_NE(fp8.status().message().find("fp8 (E4M3) is for GPUs"), std::string::npos) << fp8.status();
  EXPECT_NE(ParseKvCacheDtype("int4").status().message().find("allowed: auto, f32, bf16, int8, fp8"),
            std::string::npos);
}

}  // namespace
}  // namespace gemma::testing
