// --activations bf16 and int8 on every tiny checkpoint: prompt rows multiply bf16-rounded activations by AVX512-BF16
// dot products (bf16 weights), or activations quantized per token by AVX512-VNNI dot products (int8 weights),
// moving the reference prompts' scores a little (the figures reported); decode rows stay f32, so a sequence's
// generation does not depend on which prompt shares its steps.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "gtest/gtest.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/cpu/matmul_bf16.h"
#include "shard/cpu/matmul_int8.h"
#include "shard/model/quantize.h"
#include "tests/reference_helpers.h"
#include "tests/testdata.h"

namespace gemma::testing {
namespace {

std::unique_ptr<CpuBackend> Backend(const std::string& dir, WeightPrecision weights_precision,
                                    PromptActivations activations) {
  auto ckpt = Checkpoint::Open(dir);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  std::shared_ptr<const Checkpoint> checkpoint(std::move(*ckpt));
  auto tp = TensorParallel::Create(checkpoint->config(), 0, 1);
  EXPECT_TRUE(tp.ok()) << tp.status();
  WeightLoadOptions load;
  load.precision = weights_precision;
  auto weights = ModelWeights::Load(checkpoint, *tp, load);
  EXPECT_TRUE(weights.ok()) << weights.status();
  KvCacheOptions kv;
  kv.num_blocks = 4096 / kv.block_size;
  CpuComputeOptions compute;
  compute.prompt_activations = activations;
  auto backend = CpuBackend::Create(std::shared_ptr<const ModelWeights>(std::move(*weights)), kv, nullptr, compute);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return std::move(*backend);
}

// Prompt scores against f32 activations over the same weights: moved (where the CPU has the instructions) but by
// less than `bound`; and a generation beside a long prompt equal to the same generation alone.
void CheckPromptRows(const TinyModel& model, const std::string& ref_dir, const std::string& dir,
                     WeightPrecision weights, PromptActivations activations, bool available, double bound) {
  const auto scores = ReadJson(ref_dir + "/scores.json");
  auto f32 = Backend(dir, weights, PromptActivations::kF32);
  auto rounded = Backend(dir, weights, activations);
  double worst = 0;
  for (const auto& p : scores["prompts"]) {
    SequenceSpec spec;
    spec.prompt = p["ids"].get<std::vector<int32_t>>();
    spec.score = true;
    const auto want = RunOnEngine(f32.get(), {spec})[0].prompt_logprobs;
    const auto got = RunOnEngine(rounded.get(), {spec})[0].prompt_logprobs;
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(double(got[i]) - want[i]));
  }
  const char* name = activations == PromptActivations::kBf16 ? "bf16" : "int8";
  std::printf("%s activations %s (%s): largest prompt log-prob change vs f32 %.3g\n", model.name.c_str(), name,
              available ? "its dot-product instructions ran" : "not on this CPU: the f32 kernel ran", worst);
  ::testing::Test::RecordProperty("max_logprob_change", std::to_string(worst));
  if (available) {
    EXPECT_GT(worst, 0.0) << "prompt rows should have been rounded";
    EXPECT_LT(worst, bound);
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
  const auto alone = RunOnEngine(rounded.get(), {gen}, {64, 64})[0];
  const auto beside = RunOnEngine(rounded.get(), {gen, other}, {64, 64})[0];
  EXPECT_EQ(beside.tokens, alone.tokens);
  EXPECT_EQ(beside.token_logprobs, alone.token_logprobs);
}

class Bf16ActivationsTest : public TinyCheckpointTest {};

TEST_P(Bf16ActivationsTest, PromptScoresMoveLittleAndDecodeRowsStayF32) {
  // Measured up to 6.2e-3; tiny-g2-qscale, whose sharp, soft-capped logits amplify any rounding, 0.26 (as the
  // GPU's bf16 kernels move it by 0.28).
  CheckPromptRows(GetParam(), RefDir(), ModelDir(), WeightPrecision::kBF16, PromptActivations::kBf16,
                  HasBf16DotProducts(), GetParam().tolerance > 1e-4 ? 0.5 : 0.01);
}

class Int8ActivationsTest : public TinyCheckpointTest {};

TEST_P(Int8ActivationsTest, PromptScoresMoveLittleAndDecodeRowsStayF32) {
  CheckPromptRows(GetParam(), RefDir(), ModelDir(), WeightPrecision::kInt8, PromptActivations::kInt8,
                  HasInt8DotProducts(), GetParam().tolerance > 1e-4 ? 2.0 : 0.1);
}

INSTANTIATE_TEST_SUITE_P(Gemma1, Bf16ActivationsTest, ::testing::ValuesIn(TinyModels()), TinyModelName);
INSTANTIATE_TEST_SUITE_P(Gemma23, Bf16ActivationsTest, ::testing::ValuesIn(Gemma23TinyModels()), TinyModelName);
INSTANTIATE_TEST_SUITE_P(Gemma1, Int8ActivationsTest, ::testing::ValuesIn(TinyModels()), TinyModelName);
INSTANTIATE_TEST_SUITE_P(Gemma23, Int8ActivationsTest, ::testing::ValuesIn(Gemma23TinyModels()), TinyModelName);

}  // namespace
}  // namespace gemma::testing
