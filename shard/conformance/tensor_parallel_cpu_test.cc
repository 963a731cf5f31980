// Tensor parallelism on the CPU for Gemma 2 and 3, and quantized weights on every tiny model (below): a group of 2, 4 or 8 ranks (threads over shared memory, KV heads
// replicated where there are fewer than ranks, query heads too at 8) gives the logits of one rank, for a prompt past the sliding window
// and the decode steps after it. Tolerance: the model README's (1e-4; 1e-3 for tiny-g2-qscale); rank order of the
// all-reduce sums differs from one rank's matmul only by float32 rounding.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "shard/checkpoint/checkpoint.h"
#include "shard/collective/shm_collective.h"
#include "shard/cpu/cpu_backend.h"
#include "shard/model/model_weights.h"
#include "shard/runtime/logits_comparison.h"
#include "tests/quantized_cases.h"
#include "tests/reference_helpers.h"
#include "tests/testdata.h"

namespace gemma {
namespace {

using testing::TinyModel;

struct Case {
  TinyModel model;
  int world;
};

// Runs the prompt (all rows) and then three decode steps on rank `rank` of `world`; rank 0's logits, in order.
// `load` picks the weights' precision; `dequantize` runs the f32 kernels over them dequantized instead.
absl::Status RunRank(std::shared_ptr<const Checkpoint> ckpt, int rank, int world, const std::string& group,
                     const std::vector<int32_t>& prompt, std::vector<float>* logits, const WeightLoadOptions& load = {},
                     bool dequantize = false) {
  ASSIGN_OR_RETURN(const TensorParallel tp, TensorParallel::Create(ckpt->config(), rank, world));
  ASSIGN_OR_RETURN(std::shared_ptr<const ModelWeights> weights, ModelWeights::Load(ckpt, tp, load));
  if (dequantize) weights = weights->Dequantized();
  std::shared_ptr<HostCollective> collective;
  if (world > 1) {
    ASSIGN_OR_RETURN(collective, CreateShmCollective({rank, world, group, std::chrono::milliseconds(30000)}));
  }
  KvCacheOptions kv;
  kv.num_blocks = 32;
  ASSIGN_OR_RETURN(auto backend, CpuBackend::Create(std::move(weights), kv, collective));
  std::vector<int32_t> blocks(kv.num_blocks);
  std::iota(blocks.begin(), blocks.end(), 0);
  StepLogits out;
  SequenceStep step{prompt, 0, blocks, LogitsWanted::kAll};
  RETURN_IF_ERROR(backend->Forward({&step, 1}, &out));
  logits->insert(logits->end(), out.values.begin(), out.values.end());
  for (int i = 0; i < 3; ++i) {
    const int32_t token = prompt[i + 5];
    SequenceStep decode{{&token, 1}, static_cast<int32_t>(prompt.size()) + i, blocks, LogitsWanted::kLast};
    RETURN_IF_ERROR(backend->Forward({&decode, 1}, &out));
    logits->insert(logits->end(), out.values.begin(), out.values.end());
  }
  return absl::OkStatus();
}

std::shared_ptr<const Checkpoint> OpenTiny(const TinyModel& model, std::vector<int32_t>* prompt) {
  const std::string root = model.root();
  EXPECT_FALSE(root.empty()) << "test data for " << model.name << " is absent";
  if (root.empty()) return nullptr;
  auto opened = Checkpoint::Open(root + "/" + model.name);
  EXPECT_TRUE(opened.ok()) << opened.status();
  if (!opened.ok()) return nullptr;
  auto all = nlohmann::json::parse(testing::ReadFile(root + "/reference/" + model.reference + "/logits_rand200.json"))["ids"]
                 .get<std::vector<int32_t>>();
  prompt->assign(all.begin(), all.begin() + 40);  // 2.5 windows of 16
  return std::shared_ptr<const Checkpoint>(std::move(*opened));
}

// Runs a group of `world` ranks (threads over shared memory); every rank's logits.
std::vector<std::vector<float>> RunGroup(std::shared_ptr<const Checkpoint> ckpt, int world,
                                         const std::vector<int32_t>& prompt, const WeightLoadOptions& load = {},
                                         bool dequantize = false) {
  static int groups = 0;
  // Pids come back across the suite's processes: a random part keeps this group's name its own.
  static const uint32_t salt = std::random_device{}();
  const std::string group = absl::StrCat("tp_cpu_", ::getpid(), "_", salt, "_", groups++);
  std::vector<std::vector<float>> logits(world);
  std::vector<absl::Status> status(world);
  std::vector<std::thread> ranks;
  for (int r = 0; r < world; ++r) {
    ranks.emplace_back(
        [&, r] { status[r] = RunRank(ckpt, r, world, world > 1 ? group : "", prompt, &logits[r], load, dequantize); });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < world; ++r) EXPECT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r];
  return logits;
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) worst = std::max(worst, std::abs(double(a[i]) - b[i]));
  return worst;
}

class TensorParallelCpuTest : public ::testing::TestWithParam<Case> {};

TEST_P(TensorParallelCpuTest, AGroupGivesTheLogitsOfOneRank) {
  const Case& c = GetParam();
  std::vector<int32_t> prompt;
  auto ckpt = OpenTiny(c.model, &prompt);
  ASSERT_NE(ckpt, nullptr);
  const std::vector<float> one = RunGroup(ckpt, 1, prompt)[0];
  const auto logits = RunGroup(ckpt, c.world, prompt);
  const double worst = MaxAbsDiff(logits[0], one);
  EXPECT_LT(worst, c.model.tolerance);
  RecordProperty("max_abs_logit_diff", absl::StrCat(worst));
  // Every rank returns the same logits: the gather and the sums run in rank order.
  for (int r = 1; r < c.world; ++r) EXPECT_EQ(logits[r], logits[0]) << "rank " << r;
}

// Quantized weights (int8, int4, fp8) at one rank and a group of two: the quantized kernels give the logits of the
// f32 kernels over the same weights dequantized, within the model's bound (they differ only in where the scales
// and zeros apply).
// How far quantization itself moves the logits from bf16 is recorded (mean KL of the next-token distributions, top-1 agreement, the largest log-prob change).
using testing::QuantCase;

class QuantizedWeightsCpuTest : public ::testing::TestWithParam<QuantCase> {};

TEST_P(QuantizedWeightsCpuTest, QuantizedKernelsGiveTheDequantizedWeightsLogits) {
  const QuantCase& c = GetParam();
  std::vector<int32_t> prompt;
  auto ckpt = OpenTiny(c.model, &prompt);
  ASSERT_NE(ckpt, nullptr);
  WeightLoadOptions load;
  load.precision = c.precision;
  load.int4_group_size = c.group;
  const auto quantized = RunGroup(ckpt, c.world, prompt, load);
  const auto dequantized = RunGroup(ckpt, c.world, prompt, load, /*dequantize=*/true);
  const double worst = MaxAbsDiff(quantized[0], dequantized[0]);
  // The model's own bound (1e-4; 1e-3 for tiny-g2-qscale, whose sharp logits amplify float32 rounding 10x):
  // int4's zero term, scale * zero * sum(x) taken apart from scale * sum(code * x), rounds a little differently.
  EXPECT_LT(worst, c.model.tolerance);
  for (int r = 1; r < c.world; ++r) EXPECT_EQ(quantized[r], quantized[0]) << "rank " << r;
  RecordProperty("max_abs_logit_diff", absl::StrCat(worst));
  if (c.world > 1) {
    // Ranks quantize their slices exactly as one rank quantizes the whole: the group gives one rank's logits.
    EXPECT_LT(MaxAbsDiff(quantized[0], RunGroup(ckpt, 1, prompt, load)[0]), c.model.tolerance);
  }

  // Against bf16: quantization moves the logits, but not far.
  const std::vector<float> bf16 = RunGroup(ckpt, c.world, prompt)[0];
  const int vocab = ckpt->config().vocab_size;
  const int rows = static_cast<int>(bf16.size()) / vocab;
  const LogitsComparison q = CompareLogits(bf16.data(), quantized[0].data(), rows, vocab);
  const double kl = q.mean_kl;
  const int agree = q.top1_agreements;
  RecordProperty("mean_kl_vs_bf16", absl::StrCat(kl));
  RecordProperty("top1_agreement_vs_bf16", absl::StrCat(double(agree) / rows));
  RecordProperty("max_logprob_change_vs_bf16", absl::StrCat(q.max_logprob_change));
  std::printf("%s %s tp%d vs bf16: mean KL %.3g, top-1 agreement %d/%d, largest log-prob change %.3g\n",
              c.model.name.c_str(), WeightPrecisionName(c.precision), c.world, kl, agree, rows, q.max_logprob_change);
  // Random tiny weights give flat next-token distributions, where near-ties flip the top token easily, and
  // tiny-g2-qscale's sharp ones amplify every change; so the bounds here only catch broken quantization (a wrong
  // scale or code order moves KL to whole nats). The per-element error bound is checked in quantize_test.
  if (c.precision == WeightPrecision::kInt8) {
    EXPECT_LT(kl, 0.05);
    EXPECT_GE(agree, rows * 0.85);
  } else if (c.precision == WeightPrecision::kFp8) {
    // E4M3's 3 mantissa bits move these flat distributions about 15x int8's KL (0.0005), 0.23 on tiny-g2-qscale.
    EXPECT_LT(kl, 0.5);
  } else {
    EXPECT_LT(kl, 2.0);
  }
}

// A checkpoint cut where a 4-bit group would straddle ranks, or a group size the kernels do not take, is refused.
TEST(QuantizedWeightsCpuErrorsTest, BadPrecisionsAndGroupsAreRefusedClearly) {
  std::vector<int32_t> prompt;
  auto ckpt = OpenTiny(testing::TinyModels()[0], &prompt);
  ASSERT_NE(ckpt, nullptr);
  auto tp = TensorParallel::Create(ckpt->config(), 0, 1);
  ASSERT_TRUE(tp.ok());
  WeightLoadOptions odd;
  odd.precision = WeightPrecision::kInt4;
  odd.int4_group_size = 48;
  auto w = ModelWeights::Load(ckpt, *tp, odd);
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("allowed: 32, 64, 128 (or 0 to choose)"), std::string::npos) << w.status();
  // tiny-mha's attention output has 128 input columns, one group; at TP 8 each rank's 32 would cut it. Asked for
  // groups of 128, the load is refused; with no size asked for, it takes the 32 that fit.
  auto tp8 = TensorParallel::Create(ckpt->config(), 1, 8);
  ASSERT_TRUE(tp8.ok()) << tp8.status();
  WeightLoadOptions int4;
  int4.precision = WeightPrecision::kInt4;
  auto chosen = ModelWeights::Load(ckpt, *tp8, int4);
  ASSERT_TRUE(chosen.ok()) << chosen.status();
  EXPECT_EQ((*chosen)->layer(0).o.group_size, 32);
  int4.int4_group_size = 128;
  w = ModelWeights::Load(ckpt, *tp8, int4);
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("o_proj.weight: this rank's tensor-parallel slice, input columns [0, 32), cuts its int4 groups of "
                                       "128 columns; an int4 group size of 32 fits"),
            std::string::npos)
      << w.status();
  EXPECT_FALSE(ParseWeightPrecision("int3").ok());
  EXPECT_NE(ParseWeightPrecision("int3").status().message().find(kWeightPrecisionNames), std::string::npos);
}

std::vector<Case> Cases() {
  std::vector<Case> out;
  for (const auto& m : testing::Gemma23TinyModels()) {
    // 8 ranks over 4 query heads: each head computed by two ranks, its output added by one.
    for (int world : {2, 4, 8}) out.push_back({m, world});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(All, QuantizedWeightsCpuTest, ::testing::ValuesIn(testing::QuantCases()),
                         testing::QuantCaseName);

INSTANTIATE_TEST_SUITE_P(Gemma23, TensorParallelCpuTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           std::string n = absl::StrCat(info.param.model.name, "_tp", info.param.world);
                           for (char& ch : n) ch = std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
                           return n;
                         });

}  // namespace
}  // namespace gemma
