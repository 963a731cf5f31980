// --activations bf16 on every tiny checkpoint: prompt rows multiply bf16-rounded activations by AVX512-BF16 dot
// products, moving the reference prompts' scores a little (the figure reported); decode rows stay f32, so a
// sequence's generation does not depend on which prompt shares its steps.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "gtest/gtest.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/cpu/matmul_bf16.h"
#include "tests/reference_helpers.h"
#include "tests/testdata.h"

namespace gemma::testing {
namespace {

std::unique_ptr<CpuBackend> Bf16Backend(const std::string& dir) {
  auto ckpt = Checkpoint::Open(dir);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  auto weights = ModelWeights::Load(std::shared_ptr<const Checkpoint>(std::move(*ckpt)));
  EXPECT_TRUE(weights.ok()) << weights.status();
  KvCacheOptions kv;
  kv.num_blocks = 4096 / kv.block_size;
  CpuComputeOptions compute;
  compute.bf16_prompt_activations = true;
  auto backend = CpuBackend::Create(std::shared_ptr<const ModelWeights>(std::move(*weights)), kv, nullptr, compute);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return std::move(*backend);
}

class Bf16ActivationsTest : public TinyCheckpointTest {};

TEST_P(Bf16ActivationsTest, PromptScoresMoveLittleAndDecodeRowsStayF32) {
  const auto scores = ReadJson(RefDir() + "/scores.json");
  auto f32 = OpenBackend(ModelDir());
  auto bf16 = Bf16Backend(ModelDir());
  double worst = 0;
  for (const auto& p : scores["prompts"]) {
    SequenceSpec spec;
    spec.prompt = p["ids"].get<std::vector<int32_t>>();
    spec.score = true;
    const auto want = RunOnEngine(f32.get(), {spec})[0].prompt_logprobs;
    const auto got = RunOnEngine(bf16.get(), {spec})[0].prompt_logprobs;
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(double(got[i]) - want[i]));
  }
  std::printf("%s activations bf16 (%s): largest prompt log-prob change vs f32 %.3g\n", GetParam().name.c_str(),
              HasBf16DotProducts() ? "AVX512-BF16" : "no AVX512-BF16 here: the f32 kernel ran", worst);
  RecordProperty("max_logprob_change", std::to_string(worst));
  if (HasBf16DotProducts()) {
    EXPECT_GT(worst, 0.0) << "prompt rows should have been rounded";
    // Measured up to 6.2e-3; tiny-g2-qscale, whose sharp, soft-capped logits amplify any rounding, 0.26 (as the
    // GPU's bf16 kernels move it by 0.28).
    EXPECT_LT(worst, GetParam().tolerance > 1e-4 ? 0.5 : 0.01);
  } else {
    EXPECT_EQ(worst, 0.0);
  }

  // A generation alone, and beside a long prompt computed in chunks in the same steps: its own prompt is one
  // chunk either way and its decode rows are f32, so its tokens and log-probs are the same bit for bit.
  SequenceSpec gen;
  gen.prompt = scores["prompts"][0]["ids"].get<std::vector<int32_t>>();
  gen.max_new_tokens = 8;
  SequenceSpec other;
  other.prompt = scores["prompts"][2]["ids"].get<std::vector<int32_t>>();
  other.score = true;
  const auto alone = RunOnEngine(bf16.get(), {gen}, {64, 64})[0];
  const auto beside = RunOnEngine(bf16.get(), {gen, other}, {64, 64})[0];
  EXPECT_EQ(beside.tokens, alone.tokens);
  EXPECT_EQ(beside.token_logprobs, alone.token_logprobs);
}

INSTANTIATE_TEST_SUITE_P(Gemma1, Bf16ActivationsTest, ::testing::ValuesIn(TinyModels()), TinyModelName);
INSTANTIATE_TEST_SUITE_P(Gemma23, Bf16ActivationsTest, ::testing::ValuesIn(Gemma23TinyModels()), TinyModelName);

}  // namespace
}  // namespace gemma::testing
