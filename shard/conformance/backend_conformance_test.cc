// The backend contract (shard/runtime/backend.h), checked the same way on every backend: "cpu", "cuda-f32" and
// "cuda-bf16" (the CUDA ones skip cleanly when the build has no CUDA or no device is visible). For every tiny
// checkpoint (Gemma 1, 2 and 3), every backend must pass every case:
//   - reference logits: all positions of Google's reference prompts in one step match the reference;
//   - decode: one token per step, past the sliding window and across block edges, gives the logits of recompute;
//   - scattered block tables: shuffled, non-contiguous KV blocks give the logits contiguous ones give, for a
//     prompt step and the decode step after it;
//   - chunked prefill: a prompt cut into steps of uneven sizes gives the logits it gives whole;
//   - batch invariance: a sequence's rows are the same alone and beside other prompts and decodes in one step;
//   - bad arguments: a token outside the vocabulary, a block id outside the pool, a block table too short, a
//     position past the context are InvalidArgument naming the sequence, and nothing of the step is written
//     (a valid sequence batched with the bad one leaves the KV cache untouched).
// Tolerances are the backend's (or the model's README's, when larger: 1e-3 for the soft-capped tiny-g2-qscale; each
// run records the largest difference it saw as a test property): f32 logits within 1e-4 (cpu) or 1e-3 (cuda-f32) of the reference and of each
// other; bf16 (cuda-bf16) log-probs of the chosen token within 0.05 (0.5 on tiny-g2-qscale, whose logits reach
// |21|) and the top token the same on 90% of rows (a reference near-tie within that bound counts as the same).
// Label: the cpu cases are unit, the CUDA ones gpu.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/reference_helpers.h"
#include "nlohmann/json.hpp"
#include "shard/checkpoint/checkpoint.h"
#include "shard/cpu/cpu_backend.h"
#include "shard/cuda/cuda_backend.h"
#include "shard/model/model_weights.h"
#include "shard/runtime/backend.h"
#include "tests/testdata.h"

namespace gemma {
namespace {

using testing::GemmaTinyDir;
using testing::LogSoftmax;
using testing::ReadF32;
using testing::ReadFile;

struct BackendKind {
  std::string name;
  bool cuda = false;
  CudaPrecision precision = CudaPrecision::kF32;
  double logit_tolerance = 0;  // f32: max |logit difference|; 0: compare log-probs (bf16)
};
const BackendKind kCpu{"cpu", false, CudaPrecision::kF32, 1e-4};
const BackendKind kCudaF32{"cuda-f32", true, CudaPrecision::kF32, 1e-3};
const BackendKind kCudaBf16{"cuda-bf16", true, CudaPrecision::kBf16, 0};
constexpr double kBf16LogProbTolerance = 0.05;
constexpr double kBf16TopAgreement = 0.9;

struct Model {
  std::string name, reference;  // checkpoint folder, reference folder
  std::string (*root)() = GemmaTinyDir;  // the test data folder holding both
  // Where a model's README allows more than the backend's tolerance: tiny-g2-qscale's soft-capped, sharp
  // attention amplifies float32 rounding (float32 against float64 differs by 1.2e-4 there).
  double min_tolerance = 0;
  // The same for bf16 log-probs: tiny-g2-qscale's logits reach |21| before capping (19x tiny-g2's) and its scores
  // |13.6|, so bf16's 8-bit mantissa in the activations moves a far-from-top token's log-prob by up to 0.28
  // (measured on an H200; 0.09 between two bf16 kernel paths), ten times the bound of the other models, as for
  // f32. Its top tokens still agree.
  double bf16_logprob_tolerance = kBf16LogProbTolerance;
};
const Model kGemma1Models[] = {{"tiny-mha", "tiny-mha"}, {"tiny-mqa", "tiny-mqa"},
                               {"tiny-mqa-sharded", "tiny-mqa"}, {"tiny-mha-hd48", "tiny-mha-hd48"}};
// Gemma 2 and 3: sandwich norms, soft-caps, sliding windows, QK-norm, per-layer RoPE.
const Model kGemma23Models[] = {{"tiny-g2", "tiny-g2", testing::Gemma2TinyDir},
                                {"tiny-g2-qscale", "tiny-g2-qscale", testing::Gemma2TinyDir, 1e-3,
                                 10 * kBf16LogProbTolerance},
                                {"tiny-g3", "tiny-g3", testing::Gemma3TinyDir},
                                {"tiny-g3-scaled", "tiny-g3-scaled", testing::Gemma3TinyDir}};

struct Case {
  BackendKind backend;
  Model model;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.backend.name << " " << c.model.name; }

std::vector<Case> Cases(std::initializer_list<BackendKind> backends) {
  std::vector<Case> out;
  for (const auto& b : backends) {
    for (const auto& m : kGemma1Models) out.push_back({b, m});
    for (const auto& m : kGemma23Models) out.push_back({b, m});
  }
  return out;
}

std::string Slug(const std::string& s) {
  std::string out;
  for (char ch : s) out += std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
  return out;
}

std::vector<int32_t> Range(int first, int n) {
  std::vector<int32_t> b(n);
  std::iota(b.begin(), b.end(), first);
  return b;
}

class BackendConformanceTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    const BackendKind& kind = GetParam().backend;
    if (kind.cuda && !CudaBackendBuilt()) GTEST_SKIP() << "built without CUDA";
    if (kind.cuda && CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device present";
    root_ = GetParam().model.root();
    ASSERT_FALSE(root_.empty()) << "test data for " << GetParam().model.name << " is absent";
    auto ckpt = Checkpoint::Open(root_ + "/" + GetParam().model.name);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    auto weights = ModelWeights::Load(std::shared_ptr<const Checkpoint>(std::move(*ckpt)));
    ASSERT_TRUE(weights.ok()) << weights.status();
    std::shared_ptr<const ModelWeights> shared(std::move(*weights));
    KvCacheOptions kv;
    kv.num_blocks = 256;
    if (kind.cuda) {
      CudaBackendOptions o;
      o.precision = kind.precision;
      auto b = CreateCudaBackend(shared, kv, o);
      ASSERT_TRUE(b.ok()) << b.status();
      backend_ = std::move(*b);
    } else {
      auto b = CpuBackend::Create(shared, kv);
      ASSERT_TRUE(b.ok()) << b.status();
      backend_ = std::move(*b);
    }
    vocab_ = backend_->config().vocab_size;
    block_ = backend_->kv_block_size();
  }

  std::string RefDir() const { return root_ + "/reference/" + GetParam().model.reference; }
  std::vector<int32_t> Prompt(const std::string& name) const {
    return nlohmann::json::parse(ReadFile(RefDir() + "/logits_" + name + ".json"))["ids"].get<std::vector<int32_t>>();
  }
  int Blocks(size_t tokens) const { return static_cast<int>((tokens + block_ - 1) / block_); }

  // One step; its logits appended to `all` (when given).
  void Run(std::span<const SequenceStep> batch, std::vector<float>* all = nullptr, StepLogits* out = nullptr) {
    StepLogits l;
    const absl::Status s = backend_->Forward(batch, &l);
    ASSERT_TRUE(s.ok()) << s;
    if (all != nullptr) all->insert(all->end(), l.values.begin(), l.values.end());
    if (out != nullptr) *out = std::move(l);
  }

  // `got` against `want` ([rows, vocab]) within this backend's tolerance. `next` (optional): the token whose
  // log-prob bf16 compares on each row; else the row's top token in `want`.
  void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, const std::string& what,
                   const std::vector<int32_t>& next = {}) {
    ASSERT_EQ(got.size(), want.size()) << what;
    const BackendKind& kind = GetParam().backend;
    if (kind.logit_tolerance > 0) {
      const double tolerance = std::max(kind.logit_tolerance, GetParam().model.min_tolerance);
      double worst = 0;
      for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(double(got[i]) - want[i]));
      EXPECT_LT(worst, tolerance) << what;
      RecordProperty("max_abs_logit_diff_" + Slug(what), absl::StrCat(worst));
      return;
    }
    const size_t rows = got.size() / vocab_;
    size_t agree = 0;
    for (size_t r = 0; r < rows; ++r) {
      const float* g = got.data() + r * vocab_;
      const float* w = want.data() + r * vocab_;
      const int top_g = static_cast<int>(std::max_element(g, g + vocab_) - g);
      const int top_w = static_cast<int>(std::max_element(w, w + vocab_) - w);
      // A near-tie in the reference (bf16's top within the bf16 bound of the reference's top) is no disagreement,
      // as the greedy checks stop at the first near-tie.
      agree += top_g == top_w || w[top_w] - w[top_g] < GetParam().model.bf16_logprob_tolerance;
      const int token = r < next.size() ? next[r] : top_w;
      EXPECT_NEAR(LogSoftmax(g, vocab_)[token], LogSoftmax(w, vocab_)[token],
                  GetParam().model.bf16_logprob_tolerance)
          << what << " row " << r;
    }
    EXPECT_GE(agree, kBf16TopAgreement * rows) << what << ": " << agree << " of " << rows << " rows agree on the top";
  }

  std::unique_ptr<Backend> backend_;
  std::string root_;
  int vocab_ = 0, block_ = 0;
};

TEST_P(BackendConformanceTest, ReferenceLogits) {
  for (const char* name : {"fox", "rand37", "rand200"}) {
    const auto ids = Prompt(name);
    const auto want = ReadF32(RefDir() + "/logits_" + name + ".f32.bin");
    ASSERT_EQ(want.size(), ids.size() * vocab_) << name;
    const auto blocks = Range(0, Blocks(ids.size()));
    SequenceStep step{ids, 0, blocks, LogitsWanted::kAll};
    std::vector<float> got;
    Run({&step, 1}, &got);
    const std::vector<int32_t> next(ids.begin() + 1, ids.end());  // the last row has no next token: its top
    ExpectClose(got, want, name, next);
  }
}

// The KV-cache decode path against recompute: one token per step past the sliding window (16 in every Gemma 2
// and 3 tiny model) and across block edges gives the rows of the whole prompt computed in one step.
TEST_P(BackendConformanceTest, DecodeOneTokenAtATimeGivesTheLogitsOfRecompute) {
  const auto all_ids = Prompt("rand200");
  const std::vector<int32_t> ids(all_ids.begin(), all_ids.begin() + 53);
  const auto blocks = Range(0, Blocks(ids.size()));
  std::vector<float> whole, stepwise;
  SequenceStep all{ids, 0, blocks, LogitsWanted::kAll};
  Run({&all, 1}, &whole);
  const auto other = Range(Blocks(ids.size()), Blocks(ids.size()));
  SequenceStep first{std::span<const int32_t>(ids).subspan(0, 3), 0, other, LogitsWanted::kAll};
  Run({&first, 1}, &stepwise);
  for (size_t pos = 3; pos < ids.size(); ++pos) {
    SequenceStep decode{std::span<const int32_t>(ids).subspan(pos, 1), static_cast<int32_t>(pos), other,
                        LogitsWanted::kLast};
    Run({&decode, 1}, &stepwise);
  }
  ExpectClose(stepwise, whole, "53 positions decoded one at a time");
}

TEST_P(BackendConformanceTest, ScatteredBlockTablesGiveTheLogitsOfContiguousOnes) {
  const auto ids = Prompt("rand200");
  const int n = Blocks(ids.size() + 1);
  std::vector<int32_t> scattered = Range(n, backend_->num_kv_blocks() - n);  // none shared with the contiguous run
  std::shuffle(scattered.begin(), scattered.end(), std::mt19937(7));
  scattered.resize(n);
  auto run = [&](const std::vector<int32_t>& blocks) {
    std::vector<float> all;
    SequenceStep prompt{ids, 0, blocks, LogitsWanted::kAll};
    Run({&prompt, 1}, &all);
    const int32_t token = ids[3];
    SequenceStep decode{{&token, 1}, static_cast<int32_t>(ids.size()), blocks, LogitsWanted::kLast};
    Run({&decode, 1}, &all);
    return all;
  };
  const auto contiguous = run(Range(0, n));
  ExpectClose(run(scattered), contiguous, "scattered blocks");
}

TEST_P(BackendConformanceTest, ChunkedPrefillGivesTheLogitsOfTheWholePrompt) {
  const auto ids = Prompt("rand200");
  const auto blocks = Range(0, Blocks(ids.size()));
  std::vector<float> whole, chunked;
  SequenceStep all{ids, 0, blocks, LogitsWanted::kAll};
  Run({&all, 1}, &whole);
  // Uneven cuts: one token, within a block, across block edges, a long run.
  const std::vector<size_t> cuts = {1, 7, 16, 45, 160, ids.size()};
  const auto other = Range(Blocks(ids.size()), Blocks(ids.size()));
  for (size_t begin = 0, c = 0; c < cuts.size(); begin = cuts[c++]) {
    SequenceStep part{std::span<const int32_t>(ids).subspan(begin, cuts[c] - begin), static_cast<int32_t>(begin),
                      other, LogitsWanted::kAll};
    Run({&part, 1}, &chunked);
  }
  ExpectClose(chunked, whole, "chunks of 1, 6, 9, 29, 115, 40 tokens");
}

TEST_P(BackendConformanceTest, ARowIsTheSameAloneAndInABatch) {
  const auto a = Prompt("rand37"), b = Prompt("fox"), c = Prompt("rand200");
  const int32_t token = 11;
  // Alone: the prompt, then one decode step.
  std::vector<float> alone;
  const auto blocks_a = Range(0, Blocks(a.size() + 1));
  SequenceStep prompt{a, 0, blocks_a, LogitsWanted::kAll};
  Run({&prompt, 1}, &alone);
  SequenceStep decode{{&token, 1}, static_cast<int32_t>(a.size()), blocks_a, LogitsWanted::kLast};
  Run({&decode, 1}, &alone);
  // In a batch, second of three, beside prompts of other lengths; then beside their decodes.
  int next = Blocks(a.size() + 1);
  const auto blocks_b = Range(next, Blocks(b.size() + 1));
  next += static_cast<int>(blocks_b.size());
  const auto blocks_a2 = Range(next, Blocks(a.size() + 1));
  next += static_cast<int>(blocks_a2.size());
  const auto blocks_c = Range(next, Blocks(c.size() + 1));
  StepLogits first, second;
  SequenceStep prompts[] = {{b, 0, blocks_b, LogitsWanted::kLast},
                            {a, 0, blocks_a2, LogitsWanted::kAll},
                            {c, 0, blocks_c, LogitsWanted::kAll}};
  Run(prompts, nullptr, &first);
  const int32_t other = 5;
  SequenceStep decodes[] = {{{&other, 1}, static_cast<int32_t>(b.size()), blocks_b, LogitsWanted::kLast},
                            {{&token, 1}, static_cast<int32_t>(a.size()), blocks_a2, LogitsWanted::kLast},
                            {{&other, 1}, static_cast<int32_t>(c.size()), blocks_c, LogitsWanted::kLast}};
  Run(decodes, nullptr, &second);
  ASSERT_EQ(first.row_begin.size(), 3u);
  ASSERT_EQ(second.row_begin.size(), 3u);
  std::vector<float> batched(first.Row(first.row_begin[1]), first.Row(first.row_begin[1] + a.size()));
  batched.insert(batched.end(), second.Row(second.row_begin[1]), second.Row(second.row_begin[1] + 1));
  ExpectClose(batched, alone, "rand37 in a batch of three");
}

TEST_P(BackendConformanceTest, BadArgumentsAreRejectedNamingTheSequenceAndWriteNothing) {
  const auto p = Prompt("fox");
  const auto blocks = Range(0, Blocks(p.size() + 1));
  SequenceStep prefill{p, 0, blocks, LogitsWanted::kNone};
  Run({&prefill, 1});
  // A valid sequence that would overwrite the prompt's KV rows, batched with each bad one.
  std::vector<int32_t> overwrite(p.size());
  for (size_t i = 0; i < overwrite.size(); ++i) overwrite[i] = static_cast<int32_t>((i * 97 + 3) % vocab_);
  const int context = backend_->config().max_position_embeddings;
  const std::vector<int32_t> bad_token = {1, vocab_}, ok_tokens(block_ + 4, 1), two = {1, 2};
  const std::vector<int32_t> spare = Range(100, 2), outside = {backend_->num_kv_blocks()};
  const std::vector<int32_t> to_context = Range(100, Blocks(context + 1));
  struct Bad {
    std::string what, expect;
    SequenceStep step;
  };
  const std::vector<Bad> bad = {
      {"token outside the vocabulary", "outside the vocabulary", {bad_token, 0, spare, LogitsWanted::kLast}},
      {"block id outside the pool", "outside the pool", {two, 0, outside, LogitsWanted::kLast}},
      {"block table too short", "block table", {ok_tokens, 0, {spare.data(), 1}, LogitsWanted::kLast}},
      {"position past the context", "context", {two, context - 1, to_context, LogitsWanted::kLast}},
  };
  for (const Bad& b : bad) {
    const SequenceStep batch[] = {{overwrite, 0, blocks, LogitsWanted::kAll}, b.step};
    StepLogits out;
    const absl::Status s = backend_->Forward(batch, &out);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << b.what << ": " << s;
    EXPECT_NE(s.message().find("sequence 1"), std::string::npos) << b.what << ": " << s;
    EXPECT_NE(s.message().find(b.expect), std::string::npos) << b.what << ": " << s;
  }
  // The prompt's KV rows are untouched: its next step gives what it gives on a fresh copy of the prompt.
  const int32_t token = 11;
  std::vector<float> after, fresh;
  SequenceStep decode{{&token, 1}, static_cast<int32_t>(p.size()), blocks, LogitsWanted::kLast};
  Run({&decode, 1}, &after);
  const auto fresh_blocks = Range(50, Blocks(p.size() + 1));
  SequenceStep prefill2{p, 0, fresh_blocks, LogitsWanted::kNone};
  Run({&prefill2, 1});
  SequenceStep decode2{{&token, 1}, static_cast<int32_t>(p.size()), fresh_blocks, LogitsWanted::kLast};
  Run({&decode2, 1}, &fresh);
  ExpectClose(after, fresh, "decode after the rejected steps");
}

std::string Name(const ::testing::TestParamInfo<Case>& info) {
  std::string n = info.param.backend.name + "_" + info.param.model.name;
  for (char& ch : n) ch = std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
  return n;
}

// Two instantiations, so that ctest can label the CPU cases unit and the device ones gpu.
INSTANTIATE_TEST_SUITE_P(Cpu, BackendConformanceTest, ::testing::ValuesIn(Cases({kCpu})), Name);
INSTANTIATE_TEST_SUITE_P(Cuda, BackendConformanceTest, ::testing::ValuesIn(Cases({kCudaF32, kCudaBf16})), Name);

}  // namespace
}  // namespace gemma
