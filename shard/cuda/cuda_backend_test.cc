// What is particular to the CUDA backend (label gpu): greedy generations against Google's reference, steps against
// the CPU backend, its kernels, device sampling, CUDA graphs, tensor parallelism. What every backend must do (reference
// logits, scattered blocks, chunked prefill, batch invariance, bad arguments) is in
// shard/conformance/backend_conformance_test.cc. Without a device (or without CUDA in the build) only the error for
// asking anyway is checked; the rest skips cleanly.
#include "shard/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <thread>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "shard/checkpoint/checkpoint.h"
#include "shard/checkpoint/checkpoint_writer.h"
#include "shard/cpu/cpu_backend.h"
#include "shard/cpu/ops.h"
#include "shard/model/published_shapes.h"
#include "engine/run_batch.h"
#include "shard/collective/nccl_collective.h"
#include "shard/collective/shm_collective.h"
#include "tests/reference_helpers.h"
#include "tests/testdata.h"
#include "shard/cuda/cuda_test_support.h"

#ifdef GEMMA_HAVE_CUDA
#include <cuda_runtime.h>

#include "shard/cuda/gemm.h"
#include "shard/cuda/kernels.h"
#endif

namespace gemma {
namespace {

using testing::GemmaTinyDir;
using testing::LogSoftmax;
using testing::Greedy;

using cuda_testing::Blocks;
using cuda_testing::HaveDevice;
using cuda_testing::Kv;
using cuda_testing::LoadWeights;
using cuda_testing::OpenCuda;

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) d = std::max(d, std::abs(double(a[i]) - b[i]));
  return d;
}

// Runs one step and appends its logits to `all`.
void RunInto(Backend* backend, std::span<const SequenceStep> step, std::vector<float>* all) {
  StepLogits l;
  EXPECT_TRUE(backend->Forward(step, &l).ok());
  all->insert(all->end(), l.values.begin(), l.values.end());
}

TEST(CudaBackendTest, AskingWithoutADeviceIsAClearError) {
  if (HaveDevice()) GTEST_SKIP() << "a device is present";
  auto b = CreateCudaBackend(LoadWeights(GemmaTinyDir() + "/tiny-mqa"), Kv(256), {});
  if (!CudaBackendBuilt()) {
    EXPECT_TRUE(absl::IsUnimplemented(b.status())) << b.status();
  } else {
    EXPECT_TRUE(absl::IsFailedPrecondition(b.status())) << b.status();
    EXPECT_NE(b.status().message().find("not present"), std::string::npos) << b.status();
  }
}

struct Tiny {
  std::string name, reference;
  std::string (*root)() = GemmaTinyDir;  // the test data folder holding both
};
void PrintTo(const Tiny& t, std::ostream* os) { *os << t.name; }
const Tiny kTiny[] = {{"tiny-mha", "tiny-mha"},
                      {"tiny-mqa", "tiny-mqa"},
                      {"tiny-mqa-sharded", "tiny-mqa"},
                      {"tiny-mha-hd48", "tiny-mha-hd48"},
                      {"tiny-g2", "tiny-g2", testing::Gemma2TinyDir},
                      {"tiny-g2-qscale", "tiny-g2-qscale", testing::Gemma2TinyDir},
                      {"tiny-g3", "tiny-g3", testing::Gemma3TinyDir},
                      {"tiny-g3-scaled", "tiny-g3-scaled", testing::Gemma3TinyDir}};

class CudaReferenceTest : public ::testing::TestWithParam<Tiny> {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device present";
    root_ = GetParam().root();
    ASSERT_FALSE(root_.empty()) << "test data for " << GetParam().name << " is absent";
  }
  std::string Dir() const { return root_ + "/" + GetParam().name; }
  std::string Ref() const { return root_ + "/reference/" + GetParam().reference; }
  std::string root_;
};

TEST_P(CudaReferenceTest, F32GreedyTokensMatchUpToTheFirstNearTie) {
  auto backend = OpenCuda(Dir(), CudaPrecision::kF32);
  ASSERT_NE(backend, nullptr);
  const auto generations = testing::ReadJson(Ref() + "/generations.json");  // not a temporary: the loop reads it
  for (const auto& g : generations["results"]) {
    const auto ref = g["generated_ids"].get<std::vector<int32_t>>();
    size_t compare = ref.size();
    if (!g["first_step_with_margin_below_1e-3"].is_null()) compare = g["first_step_with_margin_below_1e-3"].get<size_t>();
    const auto got = Greedy(backend.get(), {g["prompt_ids"].get<std::vector<int32_t>>()}, static_cast<int>(ref.size()));
    ASSERT_EQ(got.size(), 1u);
    for (size_t i = 0; i < compare; ++i) ASSERT_EQ(got[0][i], ref[i]) << g["prompt"] << " step " << i;
  }
}

// KV windows (KvCacheOptions::windowed): local layers read and write their own blocks through the local tables,
// in a pool that holds only the windows. A long prompt in chunks of 48 (the GEMM prompt path, gathering earlier
// keys where the window has passed) scores as the reference does, and greedy tokens equal the cache that keeps every
// position. Gemma 1 has no windows: the same run, its layout unchanged.
TEST_P(CudaReferenceTest, F32KvWindowsScoreAndGenerateAsTheCacheThatKeepsEveryPosition) {
  const auto scores = testing::ReadJson(Ref() + "/scores.json");
  const auto& p = scores["prompts"][2];  // rand200
  SequenceSpec score;
  score.prompt = p["ids"].get<std::vector<int32_t>>();
  score.score = true;
  SequenceSpec generate;
  generate.prompt = score.prompt;
  generate.max_new_tokens = 64;
  const testing::StepBudget budget{48, 48};
  KvCacheOptions kv = Kv(4096);
  kv.windowed = true;
  CudaBackendOptions o;
  o.precision = CudaPrecision::kF32;
  auto windowed = CreateCudaBackend(LoadWeights(Dir()), kv, o, {});
  ASSERT_TRUE(windowed.ok()) << windowed.status();
  const bool has_windows = (*windowed)->config().sliding_window > 0;
  EXPECT_EQ((*windowed)->kv_window().enabled(), has_windows);
  const auto got = testing::RunOnEngine(windowed->get(), {score}, budget);
  const auto ref = p["token_logprobs"].get<std::vector<double>>();
  ASSERT_EQ(got[0].prompt_logprobs.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(got[0].prompt_logprobs[i], ref[i], 1e-3) << "token " << i + 1;
  auto full = OpenCuda(Dir(), CudaPrecision::kF32);
  ASSERT_NE(full, nullptr);
  EXPECT_FALSE(full->kv_window().enabled());
  EXPECT_EQ(testing::RunOnEngine(windowed->get(), {generate}, budget)[0].tokens,
            testing::RunOnEngine(full.get(), {generate}, budget)[0].tokens);
}

INSTANTIATE_TEST_SUITE_P(TinyCheckpoints, CudaReferenceTest, ::testing::ValuesIn(kTiny),
                         [](const auto& info) {
                           std::string n = info.param.name;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

class CudaBackendDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device present";
  }
};

// A mixed step (a prompt chunk, then decodes beside another prompt) in f32 against the CPU backend: every kernel
// (embedding, norms, RoPE and the cache write, paged attention over scattered blocks, GeGLU, GEMMs) at once.
TEST_F(CudaBackendDeviceTest, F32StepsMatchTheCpuBackendOnScatteredBlocks) {
  const std::string dir = GemmaTinyDir() + "/tiny-mha-hd48";
  auto cuda = OpenCuda(dir, CudaPrecision::kF32);
  ASSERT_NE(cuda, nullptr);
  auto cpu = CpuBackend::Create(LoadWeights(dir), Kv(4096));
  ASSERT_TRUE(cpu.ok());
  std::mt19937 rng(3);
  const int vocab = cuda->config().vocab_size;
  std::vector<int32_t> a(45), b(20);
  for (auto& t : a) t = static_cast<int32_t>(rng() % vocab);
  for (auto& t : b) t = static_cast<int32_t>(rng() % vocab);
  const std::vector<int32_t> blocks_a = {7, 3, 11, 0}, blocks_b = {5, 9};  // out of order on purpose
  auto run = [&](Backend* backend) {
    std::vector<float> all;
    SequenceStep first{std::span<const int32_t>(a).subspan(0, 30), 0, blocks_a, LogitsWanted::kAll};
    RunInto(backend, {&first, 1}, &all);
    SequenceStep second[] = {{std::span<const int32_t>(a).subspan(30), 30, blocks_a, LogitsWanted::kAll},
                             {b, 0, blocks_b, LogitsWanted::kLast}};
    RunInto(backend, second, &all);
    return all;
  };
  const auto got = run(cuda.get()), want = run(cpu->get());
  ASSERT_EQ(got.size(), want.size());
  EXPECT_LT(MaxAbsDiff(got, want), 1e-3);
}

// Gemma's own head size (256) runs kernels specialized for it, which no tiny reference checkpoint reaches: a random
// checkpoint of that head size, in f32 against the CPU backend, a 40-token prompt step (attention through GEMMs),
// a 12-token one (the tiled kernel) and then decode steps. Gemma 1, and Gemma 2 and 3 cut down from their published
// 2B and 1B with a 16-key window that every step crosses (soft-caps, sandwich norms; QK-norm, two RoPE tables).
class CudaHeadSize256Test : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device present";
  }
  ModelConfig Shape() const {
    ModelConfig shape = TinyShape();
    for (const auto& [name, config] : PublishedGemma23Shapes()) {
      if (name != GetParam()) continue;
      shape = config;
      shape.vocab_size = TinyShape().vocab_size;
      shape.hidden_size = 128;
      shape.intermediate_size = 256;
      shape.max_position_embeddings = 512;
      shape.sliding_window = 16;
      shape.tensor_prefix = "model.";
      shape.ignored_tensor_prefixes.clear();
      SetNumLayers(GetParam() == "gemma3-1b" ? 6 : 4, &shape);
      // Random weights keep scores and logits small: caps this low bend them, as the published ones bend real
      // models' (Gemma 2); a query scale other than the head size, as the 27B models have.
      if (shape.family == ModelFamily::kGemma2) {
        shape.attn_logit_softcap = 0.5f;
        shape.final_logit_softcap = 1.0f;
      }
      shape.query_pre_attn_scalar = 144;
    }
    shape.head_dim = 256;
    shape.num_heads = 2;
    shape.num_kv_heads = 1;
    return shape;
  }
};

TEST_P(CudaHeadSize256Test, KernelsMatchTheCpu) {
  const ModelConfig shape = Shape();
  const std::string dir = ::testing::TempDir() + "/hd256_" + GetParam() + "_" + std::to_string(::getpid());
  ASSERT_TRUE(WriteRandomCheckpoint(dir, shape, {}, "").ok());
  auto cuda = OpenCuda(dir, CudaPrecision::kF32);
  ASSERT_NE(cuda, nullptr);
  auto cpu = CpuBackend::Create(LoadWeights(dir), Kv(4096));
  ASSERT_TRUE(cpu.ok());
  std::vector<int32_t> prompt(52);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 7919) % shape.vocab_size);
  const std::vector<int32_t> blocks = {4, 1, 6, 2};
  auto run = [&](Backend* backend) {
    std::vector<float> all;
    SequenceStep first{std::span<const int32_t>(prompt).subspan(0, 40), 0, blocks, LogitsWanted::kAll};
    RunInto(backend, {&first, 1}, &all);
    SequenceStep second{std::span<const int32_t>(prompt).subspan(40), 40, blocks, LogitsWanted::kAll};
    RunInto(backend, {&second, 1}, &all);
    for (int i = 0; i < 3; ++i) {
      const int32_t token = 17 + i;
      SequenceStep next{{&token, 1}, static_cast<int32_t>(prompt.size()) + i, blocks, LogitsWanted::kLast};
      RunInto(backend, {&next, 1}, &all);
    }
    return all;
  };
  const auto got = run(cuda.get()), want = run(cpu->get());
  ASSERT_EQ(got.size(), want.size());
  EXPECT_LT(MaxAbsDiff(got, want), 1e-3);
  // bf16 (weights, GEMM inputs, the KV cache read with 16-byte loads): log-probs close. (Random weights give
  // near-uniform logits, so top tokens are not compared here; the reference checkpoints check those.)
  cuda.reset();
  auto bf16 = OpenCuda(dir, CudaPrecision::kBf16);
  ASSERT_NE(bf16, nullptr);
  const auto got16 = run(bf16.get());
  ASSERT_EQ(got16.size(), want.size());
  const int vocab = shape.vocab_size;
  const int rows = static_cast<int>(want.size() / vocab);
  for (int r = 0; r < rows; ++r) {
    const float* g = got16.data() + static_cast<size_t>(r) * vocab;
    const float* w = want.data() + static_cast<size_t>(r) * vocab;
    const auto lg = LogSoftmax(g, vocab), lw = LogSoftmax(w, vocab);
    double worst = 0;
    for (int i = 0; i < vocab; ++i) worst = std::max(worst, std::abs(lg[i] - lw[i]));
    EXPECT_LT(worst, 0.05) << "row " << r;
  }
  // Decode attention with the cache rows in flight as asynchronous copies gives exactly what the register-staged
  // kernel gives (the same positions in the same order).
  bf16.reset();
  CudaBackendOptions staged;
  staged.streamed_attention = false;
  auto register_staged = CreateCudaBackend(LoadWeights(dir), Kv(4096), staged);
  ASSERT_TRUE(register_staged.ok()) << register_staged.status();
  EXPECT_EQ(run(register_staged->get()), got16);
}

INSTANTIATE_TEST_SUITE_P(Families, CudaHeadSize256Test, ::testing::Values("gemma1", "gemma2-2b", "gemma3-1b"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// Runs of prompt tokens attend through cuBLASLt products a chunk of queries at a time; the tiled kernel is the
// reference. A prompt long enough for three query chunks, whole (keys from the step's rows) and in three steps (the
// later ones gather earlier keys from the paged cache), on random checkpoints with one kv head for all q heads (MQA:
// K and V shared across the batch of heads), one per q head (MHA: K and V step along with Q) and two q heads for
// each of four kv heads (GQA: the h-th head of every group batched), the last also as Gemma 2 (a 300-key window
// inside the 512-query chunks, soft-capped scores), in f32 and bf16.
TEST_F(CudaBackendDeviceTest, PromptAttentionThroughGemmsMatchesTheTiledKernel) {
  struct Shape {
    int heads, kv_heads;
    bool gemma2;  // windows of 300 keys on alternate layers, soft-capped scores, a query scale of 24
  };
  for (const Shape& sh : {Shape{4, 1, false}, Shape{4, 4, false}, Shape{8, 4, false}, Shape{8, 4, true}}) {
    ModelConfig shape = TinyShape();
    shape.num_heads = sh.heads;
    shape.num_kv_heads = sh.kv_heads;
    shape.max_position_embeddings = 2048;
    if (sh.gemma2) {
      shape.family = ModelFamily::kGemma2;
      shape.sliding_window = 300;
      shape.attn_logit_softcap = 0.5f;
      shape.final_logit_softcap = 1.0f;
      shape.query_pre_attn_scalar = 24;
      SetNumLayers(shape.num_layers, &shape);
    }
    const int kv_heads = sh.kv_heads;
    const std::string dir = ::testing::TempDir() + "/prompt_attention_" + std::to_string(sh.heads) + "_" +
                            std::to_string(kv_heads) + (sh.gemma2 ? "_g2_" : "_") + std::to_string(::getpid());
    ASSERT_TRUE(WriteRandomCheckpoint(dir, shape, {}, "").ok());
    std::vector<int32_t> prompt(1100);
    for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 7919 + 13) % shape.vocab_size);
    const std::vector<int32_t> blocks = {40, 3, 17, 9, 60, 1, 22, 5, 33, 12, 48, 7, 2, 29, 55, 14, 0, 36, 19, 44, 26,
                                         8, 51, 11, 38, 4, 63, 16, 24, 45, 6, 31, 58, 21, 10, 41, 27, 13, 50, 34,
                                         61, 18, 25, 47, 15, 53, 20, 30, 57, 23, 37, 62, 28, 42, 32, 49, 35, 52, 39,
                                         46, 43, 54, 59, 56, 64, 65, 66, 67, 68, 69};  // scattered
    ASSERT_GE(blocks.size() * 16, prompt.size());
    auto logits = [&](bool gemm, CudaPrecision precision, std::vector<size_t> cuts) {
      CudaBackendOptions o;
      o.precision = precision;
      o.prompt_attention_gemm = gemm;
      auto b = CreateCudaBackend(LoadWeights(dir), Kv(4096), o);
      EXPECT_TRUE(b.ok()) << b.status();
      std::vector<float> all;
      if (!b.ok()) return all;
      cuts.push_back(prompt.size());
      for (size_t begin = 0, c = 0; c < cuts.size(); begin = cuts[c++]) {
        const std::span<const int32_t> part = std::span<const int32_t>(prompt).subspan(begin, cuts[c] - begin);
        SequenceStep step{part, static_cast<int32_t>(begin), blocks, LogitsWanted::kAll};
        RunInto(b->get(), {&step, 1}, &all);
      }
      return all;
    };
    const auto tiled = logits(false, CudaPrecision::kF32, {});
    ASSERT_EQ(tiled.size(), prompt.size() * shape.vocab_size);
    for (const std::vector<size_t>& cuts : {std::vector<size_t>{}, std::vector<size_t>{400, 800}}) {
      const std::string what = std::to_string(sh.heads) + " q heads over " + std::to_string(kv_heads) + " kv heads" +
                               (sh.gemma2 ? " (Gemma 2)" : "") + ", " + std::to_string(cuts.size() + 1) + " steps";
      EXPECT_LT(MaxAbsDiff(logits(true, CudaPrecision::kF32, cuts), tiled), 1e-3) << what << ", f32";
      const auto gemm16 = logits(true, CudaPrecision::kBf16, cuts);
      ASSERT_EQ(gemm16.size(), tiled.size());
      double worst = 0;
      for (size_t r = 0; r < prompt.size(); ++r) {
        const auto lg = LogSoftmax(gemm16.data() + r * shape.vocab_size, shape.vocab_size);
        const auto lw = LogSoftmax(tiled.data() + r * shape.vocab_size, shape.vocab_size);
        for (int i = 0; i < shape.vocab_size; ++i) worst = std::max(worst, std::abs(lg[i] - lw[i]));
      }
      EXPECT_LT(worst, 0.05) << what << ", bf16 log-probs against f32";
    }
  }
}

TEST_F(CudaBackendDeviceTest, Bf16GreedyTokensDoNotDependOnTheBatch) {
  CudaBackendOptions o;
  o.batch_invariant = true;
  auto made = CreateCudaBackend(LoadWeights(GemmaTinyDir() + "/tiny-mqa"), Kv(4096), o);
  ASSERT_TRUE(made.ok()) << made.status();
  auto& backend = *made;
  const std::vector<std::vector<int32_t>> prompts = {{2, 3791, 323}, {2, 100, 200, 300, 400, 500}, {2, 7}, {2, 42, 43}};
  const auto alone = Greedy(backend.get(), {prompts[0]}, 24);
  const auto together = Greedy(backend.get(), prompts, 24);
  ASSERT_EQ(alone.size(), 1u);
  ASSERT_EQ(together.size(), prompts.size());
  EXPECT_EQ(alone[0], together[0]);
}

// The sampling tests draw from the last row of one step of tiny-mqa in f32.
class CudaSamplingTest : public CudaBackendDeviceTest {
 protected:
  void SetUp() override {
    CudaBackendDeviceTest::SetUp();
    if (IsSkipped()) return;
    backend = OpenCuda(GemmaTinyDir() + "/tiny-mqa", CudaPrecision::kF32);
    ASSERT_NE(backend, nullptr);
    vocab = backend->config().vocab_size;
  }
  std::unique_ptr<Backend> backend;
  int vocab = 0;
  const std::vector<int32_t> ids = {2, 3791, 323, 17};
  const std::vector<int32_t> blocks = Blocks(ids.size(), 16);
  const SequenceStep step{ids, 0, blocks, LogitsWanted::kLast};
};

// Tokens drawn on the device: greedy is the argmax with its log-prob; top-k and top-p stay inside their sets; the
// same (seed, position) gives the same token; many positions follow the softmax.
TEST_F(CudaSamplingTest, DeviceSamplingFollowsTheLogits) {
  std::vector<RowSample> samples;
  RowSample greedy;
  samples.push_back(greedy);
  RowSample top_k;
  top_k.params.temperature = 1.0f;
  top_k.params.top_k = 5;
  top_k.params.seed = 11;
  RowSample top_p;
  top_p.params.temperature = 1.0f;
  top_p.params.top_p = 0.5f;
  top_p.params.seed = 12;
  RowSample full;
  full.params.temperature = 1.0f;
  full.params.seed = 13;
  const int draws = 4000;
  for (int i = 0; i < 200; ++i) {
    top_k.position = top_p.position = i;
    samples.push_back(top_k);
    samples.push_back(top_p);
  }
  for (int i = 0; i < draws; ++i) {
    full.position = i;
    samples.push_back(full);
  }
  StepLogits logits;
  std::vector<SampledToken> tokens, again;
  ASSERT_TRUE(backend->ForwardAndSample({&step, 1}, samples, true, &logits, &tokens).ok());
  ASSERT_EQ(tokens.size(), samples.size());
  const float* row = logits.Row(0);
  const auto lp = LogSoftmax(row, vocab);
  EXPECT_EQ(tokens[0].token, Argmax(row, vocab));
  EXPECT_NEAR(tokens[0].logprob, lp[tokens[0].token], 1e-3);
  std::vector<int> order(vocab);
  for (int i = 0; i < vocab; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b]; });
  std::set<int> top5(order.begin(), order.begin() + 5), nucleus;
  double mass = 0;
  for (int id : order) {
    nucleus.insert(id);
    mass += std::exp(lp[id]);
    if (mass >= 0.5) break;
  }
  for (int i = 0; i < 200; ++i) {
    EXPECT_TRUE(top5.count(tokens[1 + 2 * i].token)) << tokens[1 + 2 * i].token;
    EXPECT_TRUE(nucleus.count(tokens[2 + 2 * i].token)) << tokens[2 + 2 * i].token;
  }
  std::vector<int> counts(vocab, 0);
  for (int i = 0; i < draws; ++i) ++counts[tokens[401 + i].token];
  for (int id : std::vector<int>(order.begin(), order.begin() + 3)) {
    const double p = std::exp(lp[id]);
    EXPECT_NEAR(counts[id] / double(draws), p, 4 * std::sqrt(p * (1 - p) / draws) + 1e-3) << "token " << id;
  }
  ASSERT_TRUE(backend->ForwardAndSample({&step, 1}, samples, false, &logits, &again).ok());
  EXPECT_TRUE(logits.values.empty()) << "logits stay on the device when not asked for";
  for (size_t i = 0; i < tokens.size(); ++i) ASSERT_EQ(tokens[i].token, again[i].token) << "draw " << i;
}

// Structured output's mask on the device: only allowed tokens are drawn, greedy takes the best allowed one, and
// the reported log-prob stays the unmasked model's.
TEST_F(CudaSamplingTest, DeviceSamplingKeepsToTheTokenMask) {
  std::vector<uint32_t> mask((vocab + 31) / 32, 0);
  const std::set<int> allowed = {7, 100, 1000, vocab - 1};
  for (int t : allowed) mask[t / 32] |= 1u << (t % 32);
  std::vector<RowSample> samples;
  RowSample greedy;
  greedy.allowed = mask;
  samples.push_back(greedy);
  for (int i = 0; i < 300; ++i) {
    RowSample r;
    r.params.temperature = 1.5f;
    r.params.seed = 5;
    r.position = i;
    r.allowed = mask;
    samples.push_back(r);
  }
  StepLogits logits;
  std::vector<SampledToken> tokens;
  ASSERT_TRUE(backend->ForwardAndSample({&step, 1}, samples, true, &logits, &tokens).ok());
  const float* row = logits.Row(0);
  const auto lp = LogSoftmax(row, vocab);
  int best = *allowed.begin();
  for (int t : allowed) best = row[t] > row[best] ? t : best;
  EXPECT_EQ(tokens[0].token, best);
  EXPECT_NEAR(tokens[0].logprob, lp[best], 1e-3) << "the log-prob is the model's, not the masked distribution's";
  std::set<int> seen;
  for (size_t i = 1; i < tokens.size(); ++i) {
    ASSERT_TRUE(allowed.count(tokens[i].token)) << tokens[i].token;
    seen.insert(tokens[i].token);
  }
  EXPECT_GE(seen.size(), 2u) << "temperature draws use more than one allowed token";
}

// Top log-probs and penalties are the device's too: a seeded row draws the same tokens whether or not it asks for
// top log-probs, those are the host's TopLogProbs of the same logits, and penalties change the draw as the host's
// ApplyPenalties says while the reported log-prob stays the model's.
TEST_F(CudaSamplingTest, DeviceSamplingReturnsTopLogprobsAndAppliesPenalties) {
  std::vector<RowSample> plain, with_top;
  for (int i = 0; i < 300; ++i) {
    RowSample r;
    r.params.temperature = 0.9f;
    r.params.top_p = 0.95f;
    r.params.seed = 21;
    r.position = i;
    plain.push_back(r);
    r.top_logprobs = 1 + i % 20;
    with_top.push_back(r);
  }
  StepLogits logits;
  std::vector<SampledToken> a, b;
  ASSERT_TRUE(backend->ForwardAndSample({&step, 1}, plain, false, &logits, &a).ok());
  ASSERT_TRUE(backend->ForwardAndSample({&step, 1}, with_top, false, &logits, &b).ok());
  ASSERT_EQ(a.size(), b.size());
  StepLogits l;
  ASSERT_TRUE(backend->Forward({&step, 1}, &l).ok());
  const std::vector<float> model(l.Row(0), l.Row(0) + vocab);
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].token, b[i].token) << "draw " << i << ": asking for top log-probs changed the token";
    EXPECT_TRUE(a[i].top_logprobs.empty());
    const auto want = TopLogProbs(model.data(), vocab, with_top[i].top_logprobs);
    ASSERT_EQ(b[i].top_logprobs.size(), want.size()) << "draw " << i;
    for (size_t k = 0; k < want.size(); ++k) {
      EXPECT_EQ(b[i].top_logprobs[k].token, want[k].first) << "draw " << i << " rank " << k;
      EXPECT_NEAR(b[i].top_logprobs[k].logprob, want[k].second, 1e-4) << "draw " << i << " rank " << k;
    }
  }
  // Greedy with penalties: the best token after the host applies them to the same logits. The history makes the
  // model's best and second tokens generated and a third a prompt token, so the penalties move the choice.
  std::vector<int> order(vocab);
  for (int i = 0; i < vocab; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int x, int y) { return model[x] > model[y]; });
  const std::vector<int32_t> history = {order[2], 5, order[0], order[1], order[0]};  // prompt: the first two
  for (const SamplingParams& p : {SamplingParams{0, 0, 1, 0, 1.5f, 0, 0}, SamplingParams{0, 0, 1, 0, 1, 1.0f, 0},
                                  SamplingParams{0, 0, 1, 0, 1.2f, 0.5f, 0.7f}}) {
    RowSample r;
    r.params = p;
    r.penalty_history = history;
    r.penalty_prompt_len = 2;
    r.top_logprobs = 3;
    std::vector<SampledToken> drawn;
    ASSERT_TRUE(backend->ForwardAndSample({&step, 1}, {&r, 1}, false, &logits, &drawn).ok());
    std::vector<float> adjusted = model;
    ApplyPenalties(p, history, 2, adjusted.data(), vocab);
    ASSERT_EQ(drawn.size(), 1u);
    EXPECT_EQ(drawn[0].token, Argmax(adjusted.data(), vocab))
        << "repetition " << p.repetition_penalty << " presence " << p.presence_penalty;
    EXPECT_NEAR(drawn[0].logprob, LogSoftmax(model.data(), vocab)[drawn[0].token], 1e-4) << "the model's log-prob";
    ASSERT_EQ(drawn[0].top_logprobs.size(), 3u);
    EXPECT_EQ(drawn[0].top_logprobs[0].token, order[0]) << "top log-probs are the model's, not the penalized ones";
  }
  // More penalized draws than one turn holds, between plain ones, and one masked too: each as the host says.
  std::vector<RowSample> many;
  std::vector<int32_t> want;
  std::vector<uint32_t> mask((vocab + 31) / 32, 0);
  for (int id : {order[0], order[1], order[5]}) mask[id / 32] |= 1u << (id % 32);
  for (int i = 0; i < 30; ++i) {
    RowSample r;
    if (i % 3 != 2) {
      r.params.presence_penalty = 0.1f * (i % 10);
      r.params.repetition_penalty = 1.0f + 0.05f * i;
      r.penalty_history = history;
      r.penalty_prompt_len = 2;
    }
    if (i == 7) r.allowed = mask;
    std::vector<float> adjusted = model;
    ApplyPenalties(r.params, history, 2, adjusted.data(), vocab);
    if (!r.allowed.empty()) ApplyTokenMask(r.allowed, adjusted.data(), vocab);
    want.push_back(Argmax(adjusted.data(), vocab));
    many.push_back(r);
  }
  std::vector<SampledToken> drawn_many;
  ASSERT_TRUE(backend->ForwardAndSample({&step, 1}, many, false, &logits, &drawn_many).ok());
  ASSERT_EQ(drawn_many.size(), many.size());
  for (size_t i = 0; i < many.size(); ++i) EXPECT_EQ(drawn_many[i].token, want[i]) << "draw " << i;
  EXPECT_NE(Argmax(model.data(), vocab), [&] {
    std::vector<float> adjusted = model;
    ApplyPenalties(SamplingParams{0, 0, 1, 0, 1, 1.0f, 0}, history, 2, adjusted.data(), vocab);
    return Argmax(adjusted.data(), vocab);
  }()) << "the presence penalty must move the greedy choice for this test to mean anything";
}

// Decode steps replayed from CUDA graphs give exactly what launching them one by one gives, for several batch
// sizes (each its own graph) and for a long prompt beside a short one.
TEST_F(CudaBackendDeviceTest, CudaGraphDecodeStepsEqualLaunchedOnes) {
  const std::string dir = GemmaTinyDir() + "/tiny-mha";
  auto graphs = OpenCuda(dir, CudaPrecision::kBf16, {}, true);
  auto launched = OpenCuda(dir, CudaPrecision::kBf16, {}, false);
  ASSERT_NE(graphs, nullptr);
  ASSERT_NE(launched, nullptr);
  const std::vector<std::vector<int32_t>> prompts = {{2, 3791, 323}, {2, 100, 200, 300, 400, 500}, {2, 7}};
  for (size_t n = 1; n <= prompts.size(); ++n) {
    const std::vector<std::vector<int32_t>> some(prompts.begin(), prompts.begin() + n);
    EXPECT_EQ(Greedy(graphs.get(), some, 20), Greedy(launched.get(), some, 20)) << n << " sequences";
  }
  std::vector<int32_t> long_prompt(300, 5);
  long_prompt[0] = 2;
  EXPECT_EQ(Greedy(graphs.get(), {long_prompt, prompts[0]}, 10), Greedy(launched.get(), {long_prompt, prompts[0]}, 10));
  // A capture that fails turns graphs off and the steps still run: the comparison would then prove nothing.
  EXPECT_GT(CudaGraphsCaptured(*graphs), 0);
}

TEST_F(CudaBackendDeviceTest, TensorParallelOneOverNcclGivesTheSameLogits) {
  auto bootstrap = MakeSingleRankCollective();
  auto nccl = CreateNcclCollective(*bootstrap, 0, std::chrono::seconds(30));
  ASSERT_TRUE(nccl.ok()) << nccl.status();
  const std::string dir = GemmaTinyDir() + "/tiny-mqa";
  auto with = OpenCuda(dir, CudaPrecision::kF32, std::shared_ptr<DeviceCollective>(std::move(*nccl)));
  auto without = OpenCuda(dir, CudaPrecision::kF32);
  ASSERT_NE(with, nullptr);
  ASSERT_NE(without, nullptr);
  const std::vector<int32_t> ids = {2, 3791, 323, 17, 99};
  const auto blocks = Blocks(ids.size(), 16);
  SequenceStep s{ids, 0, blocks, LogitsWanted::kAll};
  StepLogits a, b;
  ASSERT_TRUE(with->Forward({&s, 1}, &a).ok());
  ASSERT_TRUE(without->Forward({&s, 1}, &b).ok());
  EXPECT_EQ(a.values, b.values);
}

// Two ranks on one GPU (NCCL refuses that) through a host collective: the backend stages every tensor through
// host memory, and the logits match one rank's within the reordered sums' rounding. Gemma 1, 2 and 3 (sandwich
// norms and soft-caps after the all-reduce, QK-norm and windows on each rank's heads), over a prompt longer than
// their sliding windows.
class CudaTensorParallelTest : public ::testing::TestWithParam<Tiny> {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device present";
  }
};

TEST_P(CudaTensorParallelTest, TwoRanksOverAHostCollectiveStageThroughHostMemory) {
  const std::string root = GetParam().root();
  ASSERT_FALSE(root.empty()) << "test data for " << GetParam().name << " is absent";
  const std::string dir = root + "/" + GetParam().name;
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::shared_ptr<const Checkpoint> shared(std::move(*ckpt));
  std::vector<int32_t> ids = {2, 3791, 323, 17, 99};
  std::mt19937 rng(11);
  while (ids.size() < 40) ids.push_back(static_cast<int32_t>(rng() % shared->config().vocab_size));
  const auto blocks = Blocks(ids.size(), 16);
  SequenceStep s{ids, 0, blocks, LogitsWanted::kAll};
  const std::string name = "cuda-staged-" + std::to_string(::getpid());
  StepLogits logits[2];
  absl::Status status[2];
  auto run = [&](int rank) {
    auto c = CreateShmCollective({rank, 2, name, std::chrono::milliseconds(30000)});
    if (!c.ok()) return void(status[rank] = c.status());
    auto tp = TensorParallel::Create(shared->config(), rank, 2);
    auto w = ModelWeights::Load(shared, *tp);
    if (!w.ok()) return void(status[rank] = w.status());
    CudaBackendOptions o;
    o.precision = CudaPrecision::kF32;
    o.cuda_graphs = false;  // ranks as threads of one process: no host-collective graphs (DESIGN.md)
    auto b = CreateCudaBackend(std::shared_ptr<const ModelWeights>(std::move(*w)), Kv(4096), o,
                               std::shared_ptr<HostCollective>(std::move(*c)));
    if (!b.ok()) return void(status[rank] = b.status());
    status[rank] = (*b)->Forward({&s, 1}, &logits[rank]);
  };
  std::thread follower(run, 1);
  run(0);
  follower.join();
  ASSERT_TRUE(status[0].ok()) << status[0];
  ASSERT_TRUE(status[1].ok()) << status[1];
  auto one = OpenCuda(dir, CudaPrecision::kF32);
  ASSERT_NE(one, nullptr);
  StepLogits whole;
  ASSERT_TRUE(one->Forward({&s, 1}, &whole).ok());
  // Gemma 2's soft-capped models amplify float32 rounding (their README allows 1e-3 against the reference).
  const double tolerance = shared->config().family == ModelFamily::kGemma1 ? 1e-4 : 1e-3;
  EXPECT_LT(MaxAbsDiff(logits[0].values, whole.values), tolerance);
  EXPECT_EQ(logits[0].values, logits[1].values);
}

const Tiny kTensorParallelModels[] = {{"tiny-mqa", "tiny-mqa"},
                                      {"tiny-g2-qscale", "tiny-g2-qscale", testing::Gemma2TinyDir},
                                      {"tiny-g3-scaled", "tiny-g3-scaled", testing::Gemma3TinyDir}};
INSTANTIATE_TEST_SUITE_P(TinyCheckpoints, CudaTensorParallelTest, ::testing::ValuesIn(kTensorParallelModels),
                         [](const auto& info) {
                           std::string n = info.param.name;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST_F(CudaBackendDeviceTest, OutOfMemoryForTheKvCacheSaysWhatWasNeeded) {
  CudaBackendOptions o;
  KvCacheOptions kv;
  kv.num_blocks = 1 << 30;  // far beyond any device
  auto b = CreateCudaBackend(LoadWeights(GemmaTinyDir() + "/tiny-mqa"), kv, o);
  ASSERT_FALSE(b.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(b.status())) << b.status();
  EXPECT_NE(b.status().message().find("KV cache"), std::string::npos) << b.status();
  EXPECT_NE(b.status().message().find("MiB are free"), std::string::npos) << b.status();
}

#ifdef GEMMA_HAVE_CUDA
// Individual kernels against the CPU ops on random inputs.
template <typename T>
T* ToDevice(const std::vector<T>& v) {
  T* d = nullptr;
  cudaMalloc(&d, v.size() * sizeof(T));
  cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  cudaDeviceSynchronize();  // from pageable memory the copy may return before its DMA lands
  return d;
}
template <typename T>
std::vector<T> ToHost(const T* d, size_t n) {
  std::vector<T> v(n);
  cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return v;
}

// The decode GEMM kernel against cuBLASLt on random bf16 inputs, for every row count it takes; and each row's result
// is the same whatever the row count (batch invariance).
TEST_F(CudaBackendDeviceTest, SmallBatchGemmMatchesCublasAndIsBatchInvariant) {
  std::mt19937 rng(9);
  const int N = 1000, K = 512, M = 8;
  const auto a = cuda_testing::RandomBf16(M * K, rng), w = cuda_testing::RandomBf16(static_cast<size_t>(N) * K, rng);
  uint16_t *da = ToDevice(a), *dw = ToDevice(w);
  float* dc = nullptr;
  cudaMalloc(&dc, M * N * sizeof(float));
  cuda::GemmOptions only_lt, invariant;
  only_lt.mode = cuda::DecodeGemmMode::kCublasLtOnly;
  invariant.mode = cuda::DecodeGemmMode::kBatchInvariant;
  auto small = cuda::Gemm::Create(invariant);
  auto lt = cuda::Gemm::Create(only_lt);
  ASSERT_TRUE(small.ok() && lt.ok());
  ASSERT_TRUE((*lt)->Run(da, dw, K, dc, N, M, N, K, cuda::Dtype::kBf16, nullptr).ok());
  const auto want = ToHost(dc, M * N);
  std::vector<float> first_row;
  for (int m = 1; m <= M; ++m) {
    ASSERT_TRUE((*small)->Run(da, dw, K, dc, N, m, N, K, cuda::Dtype::kBf16, nullptr).ok());
    const auto got = ToHost(dc, m * N);
    for (int i = 0; i < m * N; ++i) ASSERT_NEAR(got[i], want[i], 1e-3f * (1 + std::abs(want[i]))) << m << " " << i;
    if (m == 1) first_row = got;
    EXPECT_TRUE(std::equal(first_row.begin(), first_row.end(), got.begin())) << "row 0 changed with " << m << " rows";
  }
  cudaFree(da);
  cudaFree(dw);
  cudaFree(dc);
}

TEST_F(CudaBackendDeviceTest, NormGeluAndGreedySamplingKernelsMatchTheCpu) {
  std::mt19937 rng(5);
  std::normal_distribution<float> n(0.0f, 2.0f);
  const int rows = 3, H = 2048;
  std::vector<float> x(rows * H), w(H), gate_up(rows * 2 * H);
  for (auto& v : x) v = n(rng);
  for (auto& v : w) v = 1.0f + 0.1f * n(rng);
  for (auto& v : gate_up) v = n(rng);
  float *dx = ToDevice(x), *dw = ToDevice(w), *dg = ToDevice(gate_up), *dout = nullptr;
  cudaMalloc(&dout, rows * H * sizeof(float));
  ASSERT_EQ(cuda::LaunchRmsNorm(dx, nullptr, rows, H, dw, 1e-6f, dout, cuda::Dtype::kF32, nullptr), cudaSuccess);
  auto got = ToHost(dout, rows * H);
  std::vector<float> want(H);
  for (int r = 0; r < rows; ++r) {
    RmsNorm(&x[r * H], w.data(), 1e-6f, want.data(), H);
    for (int i = 0; i < H; ++i) ASSERT_NEAR(got[r * H + i], want[i], 1e-4f * (1 + std::abs(want[i]))) << r << " " << i;
  }
  ASSERT_EQ(cuda::LaunchGeluMul(dg, rows, H, dout, cuda::Dtype::kF32, nullptr), cudaSuccess);
  got = ToHost(dout, rows * H);
  for (int r = 0; r < rows; ++r) {
    GeluTanhMul(&gate_up[r * 2 * H], &gate_up[r * 2 * H + H], want.data(), H);
    for (int i = 0; i < H; ++i) ASSERT_NEAR(got[r * H + i], want[i], 1e-5f * (1 + std::abs(want[i]))) << r << " " << i;
  }
  int32_t* dtok = nullptr;
  float* dlp = nullptr;
  cudaMalloc(&dtok, rows * sizeof(int32_t));
  cudaMalloc(&dlp, rows * sizeof(float));
  // Greedy draws (temperature 0) are the argmax with its log-prob.
  std::vector<cuda::RowSampling> greedy(rows);
  for (int r = 0; r < rows; ++r) greedy[r] = {r, 0.0f, 0, 1.0f, 0, 0};
  cuda::RowSampling* dgreedy = ToDevice(greedy);
  ASSERT_EQ(cuda::LaunchSampleRows(dx, rows, H, dgreedy, dtok, dlp, nullptr), cudaSuccess);
  cudaFree(dgreedy);
  const auto tok = ToHost(dtok, rows);
  const auto lp = ToHost(dlp, rows);
  for (int r = 0; r < rows; ++r) {
    const float* row = &x[r * H];
    const int best = static_cast<int>(std::max_element(row, row + H) - row);
    EXPECT_EQ(tok[r], best);
    EXPECT_NEAR(lp[r], LogSoftmax(row, H)[best], 1e-4);
  }
  for (void* p : {static_cast<void*>(dx), static_cast<void*>(dw), static_cast<void*>(dg), static_cast<void*>(dout),
                  static_cast<void*>(dtok), static_cast<void*>(dlp)}) {
    cudaFree(p);
  }
}
#endif

}  // namespace
}  // namespace gemma
