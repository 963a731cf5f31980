// --activations bf16 and int8 on every tiny checkpoint: every row of a step (prompt chunks and decode rows)
// multiplies bf16-rounded activations by AVX512-BF16 dot products (bf16 or fp8 weights), or activations quantized per
// token by AVX512-VNNI dot products (int8 or 4-bit weights), moving the reference prompts' scores a little (the figures
// reported); each row is rounded on its own, so a sequence's generation does not depend on what shares its steps.
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
                                    MatMulActivations activations) {
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
  compute.matmul_activations = activations;
  auto backend = CpuBackend::Create(std::shared_ptr<const ModelWeights>(std::move(*weights)), kv, nullptr, compute);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return std::move(*backend);
}

// Prompt scores against f32 activations over the same weights: moved (where the CPU has the instructions) but by
// less than `bound`; rows of one token rounded too; and a generation beside a long prompt and another generation
// equal to the same generation alone.
void CheckRoundedRows(const TinyModel& model, const std::string& ref_dir, const std::string& dir,
                     WeightPrecision weights, MatMulActivations activations, bool available, double bound) {
  const auto scores = ReadJson(ref_dir + "/scores.json");
  auto f32 = Backend(dir, weights, MatMulActivations::kF32);
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
  const char* name = activations == MatMulActivations::kBf16 ? "bf16" : "int8";
  std::printf("%s weights %s, activations %s (%s): largest prompt log-prob change vs f32 %.3g\n", model.name.c_str(),
              weights == WeightPrecision::kInt4   ? "int4"
              : weights == WeightPrecision::kInt8 ? "int8"
              : weights == WeightPrecision::kFp8  ? "fp8"
                                                  : "bf16",
              name,
              available ? "its dot-product instructions ran" : "not on this CPU: the f32 kernel ran", worst);
  ::testing::Test::RecordProperty("max_logprob_change", std::to_string(worst));
  if (available) {
    EXPECT_GT(worst, 0.0) << "prompt rows should have been rounded";
    EXPECT_LT(worst, bound);
  } else {
    EXPECT_EQ(worst, 0.0);
  }

  // A generation alone, and beside a long prompt computed in chunks and another generation, in the same steps:
  // its own prompt is one chunk either way and each row is rounded on its own, so its tokens and log-probs are the
  // same bit for bit.
  SequenceSpec gen;
  gen.prompt = scores["prompts"][0]["ids"].get<std::vector<int32_t>>();
  gen.max_new_tokens = 8;
  SequenceSpec other;
  other.prompt = scores["prompts"][2]["ids"].get<std::vector<int32_t>>();
  other.score = true;
  SequenceSpec other_gen;
  other_gen.prompt = scores["prompts"][1]["ids"].get<std::vector<int32_t>>();
  other_gen.max_new_tokens = 8;
  const auto alone = RunOnEngine(rounded.get(), {gen}, {64, 64})[0];
  const auto beside = RunOnEngine(rounded.get(), {gen, other, other_gen}, {64, 64})[0];
  EXPECT_EQ(beside.tokens, alone.tokens);
  EXPECT_EQ(beside.token_logprobs, alone.token_logprobs);

  // Rows of one token are rounded too: a generation from a one-token prompt, whose every row is a single token
  // (which stayed f32 when only prompt chunks were rounded), differs from f32's.
  SequenceSpec single;
  single.prompt = {gen.prompt[0]};
  single.max_new_tokens = 4;
  const auto single_rounded = RunOnEngine(rounded.get(), {single})[0];
  const auto single_exact = RunOnEngine(f32.get(), {single})[0];
  if (available) {
    EXPECT_NE(single_rounded.token_logprobs, single_exact.token_logprobs) << "one-token rows should be rounded";
  } else {
    EXPECT_EQ(single_rounded.token_logprobs, single_exact.token_logprobs);
  }
}

class Bf16ActivationsTest : public TinyCheckpointTest {};

TEST_P(Bf16ActivationsTest, RowsAreRoundedOnTheirOwnAndScoresMoveLittle) {
  // Measured up to 6.2e-3; tiny-g2-qscale, whose sharp, soft-capped logits amplify any rounding, 0.26 (as the
  // GPU's bf16 kernels move it by 0.28).
  CheckRoundedRows(GetParam(), RefDir(), ModelDir(), WeightPrecision::kBF16, MatMulActivations::kBf16,
                  HasBf16DotProducts(), GetParam().tolerance > 1e-4 ? 0.5 : 0.01);
}

class Int8ActivationsTest : public TinyCheckpointTest {};

TEST_P(Int8ActivationsTest, RowsAreRoundedOnTheirOwnAndScoresMoveLittle) {
  CheckRoundedRows(GetParam(), RefDir(), ModelDir(), WeightPrecision::kInt8, MatMulActivations::kInt8,
                  HasInt8DotProducts(), GetParam().tolerance > 1e-4 ? 2.0 : 0.1);
}

// fp8 weights at bf16 activations: the codes widened to bf16 exactly, so the same bounds as bf16 weights.
class Bf16ActivationsOverFp8WeightsTest : public TinyCheckpointTest {};

TEST_P(Bf16ActivationsOverFp8WeightsTest, RowsAreRoundedOnTheirOwnAndScoresMoveLittle) {
  CheckRoundedRows(GetParam(), RefDir(), ModelDir(), WeightPrecision::kFp8, MatMulActivations::kBf16,
                   HasBf16DotProducts(), GetParam().tolerance > 1e-4 ? 0.5 : 0.01);
}

// 4-bit weights (and the int8 LM head they come with) at int8 activations, W4A8: the same integer sums, group by
// group, so the same bounds as W8A8.
class Int8ActivationsOver4BitWeightsTest : public TinyCheckpointTest {};

TEST_P(Int8ActivationsOver4BitWeightsTest, RowsAreRoundedOnTheirOwnAndScoresMoveLittle) {
  CheckRoundedRows(GetParam(), RefDir(), ModelDir(), WeightPrecision::kInt4, MatMulActivations::kInt8,
                   HasInt8DotProducts(), GetParam().tolerance > 1e-4 ? 2.0 : 0.1);
}

INSTANTIATE_TEST_SUITE_P(Gemma1, Bf16ActivationsTest, ::testing::ValuesIn(TinyModels()), TinyModelName);
INSTANTIATE_TEST_SUITE_P(Gemma23, Bf16ActivationsTest, ::testing::ValuesIn(Gemma23TinyModels()), TinyModelName);
INSTANTIATE_TEST_SUITE_P(Gemma1, Int8ActivationsTest, ::testing::ValuesIn(TinyModels()), TinyModelName);
INSTANTIATE_TEST_SUITE_P(Gemma23, Int8ActivationsTest, ::testing::ValuesIn(Gemma23TinyModels()), TinyModelName);
INSTANTIATE_TEST_SUITE_P(Gemma1, Bf16ActivationsOverFp8WeightsTest, ::testing::ValuesIn(TinyModels()), TinyModelName);
INSTANTIATE_TEST_SUITE_P(Gemma23, Bf16ActivationsOverFp8WeightsTest, ::testing::ValuesIn(Gemma23TinyModels()),
                         TinyModelName);
INSTANTIATE_TEST_SUITE_P(Gemma1, Int8ActivationsOver4BitWeightsTest, ::testing::ValuesIn(TinyModels()), TinyModelName);
INSTANTIATE_TEST_SUITE_P(Gemma23, Int8ActivationsOver4BitWeightsTest, ::testing::ValuesIn(Gemma23TinyModels()),
                         TinyModelName);

}  // namespace
}  // namespace gemma::testing
