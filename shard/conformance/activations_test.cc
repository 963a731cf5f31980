// Activation reads and interventions against gemma-activations-tiny
// (gemma_pytorch's own activations and intervened outputs of tiny-mha and
// tiny-mqa), on every backend: the CPU (label unit) and the CUDA backend in f32
// (label gpu; skipped without a device).
//
// Tolerances (backend_under_test.h): on the CPU the README's, activations
// within 1e-5 of the reference row's L2 norm, at every position (rows grow with
// depth from 2.6 to 34, so an absolute bound would be loose early and tight
// late; observed: under 1e-6), logits within 5e-5 absolute (observed: under
// 2e-6); on the GPU 1e-4 and 1e-3. Greedy generations exactly (their smallest
// top-1/top-2 margin is 0.0022, far above twice the logit error).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "shard/checkpoint/checkpoint.h"
#include "shard/collective/shm_collective.h"
#include "shard/conformance/backend_under_test.h"
#include "shard/model/model_weights.h"
#include "tests/reference_helpers.h"
#include "tests/testdata.h"

namespace gemma {
namespace {

using testing::BackendUnderTest;
using testing::ReadF32;
using testing::ReadJson;

// Every point of a model of `layers` layers, and the reference file each is
// compared with.
struct Point {
  ActivationPoint point;
  std::string file;
};
std::vector<Point> AllPoints(int layers) {
  std::vector<Point> out;
  out.push_back({{ActivationKind::kResidual, 0}, "hidden_embedding"});
  for (int i = 0; i + 1 < layers; ++i) {
    out.push_back({{ActivationKind::kResidual, i + 1},
                   absl::StrCat("hidden_after_layer_", i)});
  }
  out.push_back({{ActivationKind::kResidual, layers}, "hidden_final_norm"});
  for (int i = 0; i < layers; ++i) {
    out.push_back({{ActivationKind::kAttentionOutput, i},
                   absl::StrCat("attn_output_layer_", i)});
    out.push_back({{ActivationKind::kMlpOutput, i},
                   absl::StrCat("mlp_output_layer_", i)});
  }
  return out;
}
std::vector<ActivationPoint> PointsOf(const std::vector<Point>& points) {
  std::vector<ActivationPoint> out;
  for (const Point& p : points) out.push_back(p.point);
  return out;
}

// The largest |got - want| of any row, relative to that row's L2 norm in
// `want`.
double MaxRowRelativeDiff(const std::vector<float>& got,
                          const std::vector<float>& want, int64_t width) {
  if (got.size() != want.size()) return INFINITY;
  double worst = 0;
  for (size_t r = 0; r < want.size() / width; ++r) {
    double norm = 0, diff = 0;
    for (int64_t i = 0; i < width; ++i) {
      norm += double(want[r * width + i]) * want[r * width + i];
      diff = std::max(
          diff, std::abs(double(got[r * width + i]) - want[r * width + i]));
    }
    worst = std::max(worst, diff / std::sqrt(norm));
  }
  return worst;
}
double MaxAbsDiff(const std::vector<float>& got,
                  const std::vector<float>& want) {
  if (got.size() != want.size()) return INFINITY;
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i)
    worst = std::max(worst, std::abs(double(got[i]) - want[i]));
  return worst;
}

// The reference's three interventions.
std::vector<Intervention> NamedIntervention(const std::string& name,
                                            const std::string& data) {
  Intervention iv;
  if (name == "steer_layer0") {
    iv.kind = InterventionKind::kSteer;
    iv.layer = 0;
    iv.vector = ReadF32(data + "/steering_vector.f32.bin");
  } else if (name == "ablate_layer1_head1") {
    iv.kind = InterventionKind::kAblateHead;
    iv.layer = 1;
    iv.head = 1;
  } else {
    iv.kind = InterventionKind::kScaleMlp;
    iv.layer = 0;
    iv.factor = 0.5f;
  }
  return {iv};
}
const char* const kInterventions[] = {"steer_layer0", "ablate_layer1_head1",
                                      "mlp_layer0_scale0.5"};

// One prompt's pass: all logits and the activations asked for.
struct Pass {
  std::vector<float> logits;
  std::vector<std::vector<float>> activations;
};
absl::StatusOr<Pass> RunPass(Backend& backend, const std::vector<int32_t>& ids,
                             const std::vector<Intervention>& interventions,
                             const std::vector<ActivationPoint>& points) {
  std::vector<int32_t> blocks(backend.num_kv_blocks());
  std::iota(blocks.begin(), blocks.end(), 0);
  SequenceStep step{ids, 0, blocks, LogitsWanted::kAll};
  step.interventions = interventions;
  step.activations = points;
  StepLogits out;
  RETURN_IF_ERROR(backend.Forward({&step, 1}, &out));
  Pass pass;
  pass.logits = out.values;
  if (!out.activations.empty()) pass.activations = out.activations[0];
  return pass;
}

// A backend of `kind` over a whole checkpoint, with room for `kv_tokens`.
std::unique_ptr<Backend> OpenWhole(const BackendUnderTest& kind,
                                   const std::string& dir, int kv_tokens) {
  auto ckpt = Checkpoint::Open(dir);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  if (!ckpt.ok()) return nullptr;
  auto weights =
      ModelWeights::Load(std::shared_ptr<const Checkpoint>(std::move(*ckpt)));
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (!weights.ok()) return nullptr;
  auto backend = testing::OpenBackendUnderTest(
      kind, std::shared_ptr<const ModelWeights>(std::move(*weights)),
      kv_tokens);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

struct ActivationsCase {
  BackendUnderTest backend;
  std::string model;
};

class ActivationsTest : public ::testing::TestWithParam<ActivationsCase> {
 protected:
  void SetUp() override {
    const std::string why = testing::WhyNotHere(GetParam().backend);
    if (!why.empty()) GTEST_SKIP() << why;
    kActivationTolerance = GetParam().backend.activation_tolerance;
    kLogitTolerance = GetParam().backend.logit_tolerance;
    data_ = testing::GemmaActivationsTinyDir();
    ASSERT_FALSE(data_.empty())
        << "gemma-activations-tiny is absent: the activation checks cannot run";
    model_dir_ = testing::GemmaTinyDir() + "/" + model();
    backend_ = OpenWhole(GetParam().backend, model_dir_, 1024);
    ASSERT_NE(backend_, nullptr);
    layers_ = backend_->config().num_layers;
    hidden_ = backend_->config().hidden_size;
  }
  const std::string& model() const { return GetParam().model; }
  std::string RefDir() const { return data_ + "/" + model(); }
  std::vector<int32_t> Ids(const std::string& dir) const {
    return ReadJson(dir + "/hidden_embedding.json")["ids"]
        .get<std::vector<int32_t>>();
  }
  // Compares every point of `pass` with the files in `dir`; returns the worst
  // relative difference.
  double CheckActivations(const Pass& pass, const std::vector<Point>& points,
                          const std::string& dir) {
    EXPECT_EQ(pass.activations.size(), points.size());
    double worst = 0;
    for (size_t j = 0; j < points.size() && j < pass.activations.size(); ++j) {
      const std::vector<float> want =
          ReadF32(dir + "/" + points[j].file + ".f32.bin");
      EXPECT_EQ(want.size(), Ids(dir).size() * hidden_) << points[j].file;
      const double d = MaxRowRelativeDiff(pass.activations[j], want, hidden_);
      EXPECT_LT(d, kActivationTolerance) << dir << " " << points[j].file;
      worst = std::max(worst, d);
    }
    return worst;
  }

  // The backend's bounds (backend_under_test.h).
  double kActivationTolerance = 0, kLogitTolerance = 0;
  std::string data_, model_dir_;
  std::unique_ptr<Backend> backend_;
  int layers_ = 0;
  int64_t hidden_ = 0;
};

TEST_P(ActivationsTest, EveryActivationMatchesTheReference) {
  const std::vector<Point> points = AllPoints(layers_);
  double worst = 0;
  for (const char* prompt : {"fox", "rand37"}) {
    const std::string dir = RefDir() + "/" + prompt;
    auto pass = RunPass(*backend_, Ids(dir), {}, PointsOf(points));
    ASSERT_TRUE(pass.ok()) << pass.status();
    worst = std::max(worst, CheckActivations(*pass, points, dir));
  }
  RecordProperty("max_row_relative_diff", absl::StrCat(worst));
  std::printf("%s activations: max |diff| / row norm %.3g\n",
              model().c_str(), worst);
}

TEST_P(ActivationsTest, InterventionLogitsAndActivationsMatchTheReference) {
  const std::vector<Point> points = AllPoints(layers_);
  for (const char* name : kInterventions) {
    const std::string dir = RefDir() + "/interventions/" + name;
    const std::vector<float> want = ReadF32(dir + "/logits_fox.f32.bin");
    const std::vector<float> plain =
        ReadF32(testing::GemmaTinyDir() + "/reference/" + model() +
                "/logits_fox.f32.bin");
    auto pass = RunPass(*backend_, Ids(dir + "/activations_fox"),
                        NamedIntervention(name, data_), PointsOf(points));
    ASSERT_TRUE(pass.ok()) << pass.status();
    const double logits = MaxAbsDiff(pass->logits, want);
    EXPECT_LT(logits, kLogitTolerance) << name;
    // The intervention did something: the reference moved the logits by 0.36 or
    // more.
    EXPECT_GT(MaxAbsDiff(pass->logits, plain), 0.1) << name;
    const double acts =
        CheckActivations(*pass, points, dir + "/activations_fox");
    RecordProperty(absl::StrCat("max_abs_logit_diff_", name),
                   absl::StrCat(logits));
    std::printf(
        "%s %s: logits max abs diff %.3g, activations max |diff| / row norm "
        "%.3g\n",
        model().c_str(), name, logits, acts);
  }
}

TEST_P(ActivationsTest, SteeredGreedyGenerationsMatchTheReference) {
  const auto gens =
      ReadJson(RefDir() + "/interventions/steer_layer0/generations.json");
  ASSERT_EQ(gens["results"].size(), 2u);
  std::vector<SequenceSpec> specs;
  for (const auto& g : gens["results"]) {
    SequenceSpec s;
    s.prompt = g["prompt_ids"].get<std::vector<int32_t>>();
    s.max_new_tokens = 32;
    s.interventions = NamedIntervention("steer_layer0", data_);
    s.cache_salt = 7;
    specs.push_back(s);
  }
  // Both in one batch, the prompts in chunks of 8: decode steps and chunked
  // prefill both carry the intervention.
  const auto got = testing::RunOnEngine(backend_.get(), specs, {64, 8});
  ASSERT_EQ(got.size(), specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& g = gens["results"][i];
    EXPECT_EQ(got[i].tokens, g["generated_ids"].get<std::vector<int32_t>>())
        << g["prompt"];
  }
}

// Through the engine: a scoring sequence reads some positions, its prompt cut
// in chunks of 8; RunBatch puts the rows of every chunk together, in position
// order.
TEST_P(ActivationsTest, TheEngineDeliversTheAskedPositionsAcrossChunks) {
  const std::string dir =
      RefDir() + "/interventions/steer_layer0/activations_fox";
  SequenceSpec spec;
  spec.prompt = Ids(dir);
  spec.score = true;
  spec.interventions = NamedIntervention("steer_layer0", data_);
  spec.activations = {{ActivationKind::kResidual, 1},
                      {ActivationKind::kMlpOutput, 0}};
  spec.activation_positions = {0, 5, 8, 17, 18};
  const auto done = testing::RunOnEngine(backend_.get(), {spec}, {8, 8});
  ASSERT_EQ(done.size(), 1u);
  ASSERT_EQ(done[0].activations.size(), 2u);
  const char* files[] = {"hidden_after_layer_0", "mlp_output_layer_0"};
  for (int j = 0; j < 2; ++j) {
    const std::vector<float> all = ReadF32(dir + "/" + files[j] + ".f32.bin");
    std::vector<float> want;
    for (int32_t p : spec.activation_positions) {
      want.insert(want.end(), all.begin() + p * hidden_,
                  all.begin() + (p + 1) * hidden_);
    }
    EXPECT_LT(MaxRowRelativeDiff(done[0].activations[j], want, hidden_),
              kActivationTolerance)
        << files[j];
  }
  EXPECT_EQ(done[0].prompt_logprobs.size(), spec.prompt.size() - 1);
}

// Rows that ask for nothing are computed as in a step without any: bit for
// bit. (The step without any has the same rows, so that a backend whose
// products depend on the batch's size, as cuBLASLt's do, is held to it too.)
TEST_P(ActivationsTest, UnchangedRowsAreBitIdenticalBesideInterventions) {
  const std::vector<int32_t> fox = Ids(RefDir() + "/fox"),
                             rand37 = Ids(RefDir() + "/rand37");
  StepLogits alone, mixed;
  std::vector<int32_t> blocks_a(8), blocks_b(8);
  std::iota(blocks_a.begin(), blocks_a.end(), 0);
  std::iota(blocks_b.begin(), blocks_b.end(), 8);
  SequenceStep plain{rand37, 0, blocks_a, LogitsWanted::kAll};
  SequenceStep plain_fox{fox, 0, blocks_b, LogitsWanted::kAll};
  SequenceStep without[] = {plain_fox, plain};
  ASSERT_TRUE(backend_->Forward(without, &alone).ok());
  EXPECT_TRUE(alone.activations.empty());

  std::vector<Intervention> all = NamedIntervention("steer_layer0", data_);
  for (const char* name : {"ablate_layer1_head1", "mlp_layer0_scale0.5"})
    all.push_back(NamedIntervention(name, data_)[0]);
  all.push_back({InterventionKind::kScaleAttention, 1, {}, 2.0f});
  const std::vector<ActivationPoint> points = PointsOf(AllPoints(layers_));
  SequenceStep changed{fox, 0, blocks_b, LogitsWanted::kAll};
  changed.interventions = all;
  changed.activations = points;
  SequenceStep batch[] = {changed, plain};
  ASSERT_TRUE(backend_->Forward(batch, &mixed).ok());
  ASSERT_EQ(mixed.activations.size(), 2u);
  EXPECT_EQ(mixed.activations[0].size(), points.size());
  EXPECT_TRUE(mixed.activations[1].empty());
  const int64_t V = alone.vocab_size;
  const std::vector<float> rand37_mixed(
      mixed.values.begin() + mixed.row_begin[1] * V, mixed.values.end());
  const std::vector<float> rand37_alone(
      alone.values.begin() + alone.row_begin[1] * V, alone.values.end());
  ASSERT_EQ(rand37_mixed.size(), rand37.size() * V);
  ASSERT_EQ(rand37_mixed.size(), rand37_alone.size());
  EXPECT_EQ(std::memcmp(rand37_mixed.data(), rand37_alone.data(),
                        rand37_alone.size() * 4),
            0);
  // The changed row did change.
  EXPECT_NE(std::memcmp(mixed.values.data(), alone.values.data(),
                        fox.size() * V * 4),
            0);
}

// An intervention limited to positions [5, 10) touches those positions only:
// after layer 0 the stream there is the plain one plus v, exactly, and
// elsewhere the plain one.
TEST_P(ActivationsTest, InterventionsApplyOnlyWithinTheirPositions) {
  const std::vector<int32_t> fox = Ids(RefDir() + "/fox");
  const std::vector<ActivationPoint> after0 = {{ActivationKind::kResidual, 1}};
  auto plain = RunPass(*backend_, fox, {}, after0);
  std::vector<Intervention> steer = NamedIntervention("steer_layer0", data_);
  steer[0].begin_pos = 5;
  steer[0].end_pos = 10;
  auto steered = RunPass(*backend_, fox, steer, after0);
  ASSERT_TRUE(plain.ok() && steered.ok());
  const std::vector<float>& a = plain->activations[0];
  const std::vector<float>& b = steered->activations[0];
  ASSERT_EQ(a.size(), fox.size() * hidden_);
  for (size_t t = 0; t < fox.size(); ++t) {
    for (int64_t i = 0; i < hidden_; ++i) {
      const float want = t >= 5 && t < 10
                             ? a[t * hidden_ + i] + steer[0].vector[i]
                             : a[t * hidden_ + i];
      ASSERT_EQ(b[t * hidden_ + i], want) << "position " << t << " value " << i;
    }
  }
  // Logits before position 5 are unchanged; from 5 on they move.
  const int64_t V = backend_->config().vocab_size;
  EXPECT_EQ(
      std::memcmp(plain->logits.data(), steered->logits.data(), 5 * V * 4), 0);
  EXPECT_NE(std::memcmp(plain->logits.data() + 5 * V,
                        steered->logits.data() + 5 * V, V * 4),
            0);
}

TEST_P(ActivationsTest, BadInterventionsAndPointsAreRefusedNamingTheField) {
  const std::vector<int32_t> fox = Ids(RefDir() + "/fox");
  struct Bad {
    Intervention iv;
    std::string expect;
  };
  const std::vector<Bad> bad = {
      {{InterventionKind::kSteer, layers_, std::vector<float>(hidden_)},
       absl::StrCat("layer ", layers_, " is outside [0, ", layers_, ")")},
      {{InterventionKind::kSteer, 0, std::vector<float>(3)},
       "vector of 3 values; hidden_size is 128"},
      {{InterventionKind::kSteer, 0, std::vector<float>(hidden_, NAN)},
       "vector[0] is not finite"},
      {{InterventionKind::kScaleMlp, 0, {}, INFINITY},
       "factor inf is not finite"},
      {{InterventionKind::kAblateHead, 0, {}, 1, 4},
       "head 4 is outside [0, 4)"},
      {{InterventionKind::kScaleAttention, 0, {}, 1, 0, 5, 4},
       "positions [5, 4)"},
      {{InterventionKind::kScaleAttention, 0, {}, 1, 0, -1, 4},
       "positions [-1, 4)"},
  };
  for (const Bad& b : bad) {
    auto pass = RunPass(*backend_, fox, {b.iv}, {});
    ASSERT_FALSE(pass.ok()) << b.expect;
    EXPECT_EQ(pass.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(pass.status().message().find("sequence 0: intervention 0"),
              std::string::npos)
        << pass.status();
    EXPECT_NE(pass.status().message().find(b.expect), std::string::npos)
        << pass.status();
  }
  const std::vector<std::pair<ActivationPoint, std::string>> bad_points = {
      {{ActivationKind::kResidual, layers_ + 1},
       absl::StrCat("(residual): index ", layers_ + 1, " is outside [0, ",
                    layers_ + 1, ")")},
      {{ActivationKind::kAttentionOutput, layers_},
       absl::StrCat("(attention_output): index ", layers_, " is outside [0, ",
                    layers_, ")")},
      {{ActivationKind::kMlpOutput, -1},
       absl::StrCat("(mlp_output): index -1 is outside [0, ", layers_, ")")},
  };
  for (const auto& [point, expect] : bad_points) {
    auto pass = RunPass(*backend_, fox, {}, {point});
    ASSERT_FALSE(pass.ok()) << expect;
    EXPECT_NE(pass.status().message().find(expect), std::string::npos)
        << pass.status();
  }
}

// Tensor parallelism (2 ranks, threads over shared memory): rank 0 reads the
// activations of one rank, with each intervention (head 3 lives on rank 1);
// followers read none.
absl::Status RunTpRank(const BackendUnderTest& kind,
                       std::shared_ptr<const Checkpoint> ckpt, int rank,
                       int world, const std::string& group,
                       const std::vector<int32_t>& ids,
                       const std::vector<std::vector<Intervention>>& cases,
                       const std::vector<ActivationPoint>& points,
                       std::vector<Pass>* passes) {
  ASSIGN_OR_RETURN(const TensorParallel tp,
                   TensorParallel::Create(ckpt->config(), rank, world));
  ASSIGN_OR_RETURN(auto weights, ModelWeights::Load(ckpt, tp));
  std::shared_ptr<HostCollective> collective;
  if (world > 1) {
    ASSIGN_OR_RETURN(collective,
                     CreateShmCollective({rank, world, group,
                                          std::chrono::milliseconds(30000)}));
  }
  ASSIGN_OR_RETURN(auto backend,
                   testing::OpenBackendUnderTest(kind, std::move(weights), 128,
                                                 collective));
  for (const auto& interventions : cases) {
    ASSIGN_OR_RETURN(Pass pass, RunPass(*backend, ids, interventions, points));
    passes->push_back(std::move(pass));
  }
  return absl::OkStatus();
}

TEST_P(ActivationsTest, TensorParallelGroupGivesTheActivationsOfOneRank) {
  auto opened = Checkpoint::Open(model_dir_);
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::shared_ptr<const Checkpoint> ckpt(std::move(*opened));
  const std::vector<int32_t> fox = Ids(RefDir() + "/fox");
  const std::vector<Point> points = AllPoints(layers_);
  std::vector<std::vector<Intervention>> cases = {{}};
  for (const char* name : kInterventions)
    cases.push_back(NamedIntervention(name, data_));
  cases.push_back({{InterventionKind::kAblateHead, 1, {}, 1, 3},
                   {InterventionKind::kScaleAttention, 0, {}, 2.0f}});

  std::vector<Pass> one;
  const BackendUnderTest& kind = GetParam().backend;
  ASSERT_TRUE(
      RunTpRank(kind, ckpt, 0, 1, "", fox, cases, PointsOf(points), &one).ok());
  static const uint32_t salt = std::random_device{}();
  const std::string group =
      absl::StrCat("act_tp_", ::getpid(), "_", salt, "_", kind.name, "_",
                   model());
  std::vector<std::vector<Pass>> ranks(2);
  std::vector<absl::Status> status(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      status[r] = RunTpRank(kind, ckpt, r, 2, group, fox, cases,
                            PointsOf(points), &ranks[r]);
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 2; ++r)
    ASSERT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r];
  ASSERT_EQ(ranks[0].size(), cases.size());
  double worst_acts = 0, worst_logits = 0;
  for (size_t c = 0; c < cases.size(); ++c) {
    EXPECT_TRUE(ranks[1][c].activations.empty())
        << "a follower read activations";
    EXPECT_EQ(ranks[1][c].logits, ranks[0][c].logits);
    ASSERT_EQ(ranks[0][c].activations.size(), points.size());
    worst_logits =
        std::max(worst_logits, MaxAbsDiff(ranks[0][c].logits, one[c].logits));
    for (size_t j = 0; j < points.size(); ++j) {
      worst_acts = std::max(worst_acts,
                            MaxRowRelativeDiff(ranks[0][c].activations[j],
                                               one[c].activations[j], hidden_));
    }
    if (c >= 1 && c <= 3) {  // against the reference too
      const std::string dir =
          RefDir() + "/interventions/" + kInterventions[c - 1];
      EXPECT_LT(
          MaxAbsDiff(ranks[0][c].logits, ReadF32(dir + "/logits_fox.f32.bin")),
          kLogitTolerance)
          << dir;
    }
  }
  // The last case differs from the plain pass: head 3 (rank 1's) is ablated.
  EXPECT_GT(MaxAbsDiff(ranks[0].back().logits, ranks[0][0].logits), 1e-3);
  EXPECT_LT(worst_logits, kLogitTolerance);
  EXPECT_LT(worst_acts, kActivationTolerance);
  std::printf("%s tp2 vs tp1: logits %.3g, activations %.3g relative\n",
              model().c_str(), worst_logits, worst_acts);
}

// Gemma 2 and 3 (sandwich norms, local layers; no reference activations): the
// reads are the terms added to the stream, so residual L+1 = (residual L +
// attention output L) + MLP output L exactly, in float32, at every position of
// a prompt past the sliding window; a steer after layer 0 shows in residual 1
// and nowhere before it.
class Gemma23ActivationsTest
    : public ::testing::TestWithParam<
          std::tuple<BackendUnderTest, testing::TinyModel>> {};

TEST_P(Gemma23ActivationsTest, ReadsAddUpToTheResidualStream) {
  const BackendUnderTest& kind = std::get<0>(GetParam());
  const std::string why = testing::WhyNotHere(kind);
  if (!why.empty()) GTEST_SKIP() << why;
  const testing::TinyModel& m = std::get<1>(GetParam());
  const std::string root = m.root();
  ASSERT_FALSE(root.empty()) << "test data for " << m.name << " is absent";
  auto backend = OpenWhole(kind, root + "/" + m.name, 1024);
  ASSERT_NE(backend, nullptr);
  const int layers = backend->config().num_layers;
  const int64_t H = backend->config().hidden_size;
  auto all = ReadJson(root + "/reference/" + m.reference +
                      "/logits_rand200.json")["ids"]
                 .get<std::vector<int32_t>>();
  const std::vector<int32_t> ids(all.begin(), all.begin() + 40);
  const std::vector<Point> points = AllPoints(layers);
  auto pass = RunPass(*backend, ids, {}, PointsOf(points));
  ASSERT_TRUE(pass.ok()) << pass.status();
  // AllPoints: residual 0..layers-1, the final norm, then attention and MLP
  // outputs of each layer.
  auto residual = [&](int i) -> const std::vector<float>& {
    return pass->activations[i];
  };
  auto attn = [&](int l) -> const std::vector<float>& {
    return pass->activations[layers + 1 + 2 * l];
  };
  auto mlp = [&](int l) -> const std::vector<float>& {
    return pass->activations[layers + 2 + 2 * l];
  };
  for (int l = 0; l + 1 < layers; ++l) {
    ASSERT_EQ(residual(l + 1).size(), ids.size() * H);
    for (size_t i = 0; i < residual(l + 1).size(); ++i) {
      ASSERT_EQ(residual(l + 1)[i], (residual(l)[i] + attn(l)[i]) + mlp(l)[i])
          << "layer " << l << " value " << i;
    }
  }
  // The final norm's rows have RMS near sqrt(mean((1 + w)^2)) > 0: not a copy
  // of the raw stream.
  EXPECT_NE(residual(layers), residual(layers - 1));

  std::vector<float> v(H, 0.25f);
  auto steered = RunPass(*backend, ids, {{InterventionKind::kSteer, 0, v}},
                         PointsOf(points));
  ASSERT_TRUE(steered.ok()) << steered.status();
  EXPECT_EQ(steered->activations[0], residual(0));
  EXPECT_EQ(steered->activations[layers + 1], attn(0));
  EXPECT_EQ(steered->activations[layers + 2], mlp(0));
  for (size_t i = 0; i < residual(1).size(); ++i)
    ASSERT_EQ(steered->activations[1][i], residual(1)[i] + 0.25f);

  // Scaling acts on the term the layer adds, after the post-norm (before it,
  // the norm would undo the scale): the read MLP output is halved exactly.
  Intervention half{InterventionKind::kScaleMlp, 0, {}, 0.5f};
  auto scaled = RunPass(*backend, ids, {half}, PointsOf(points));
  ASSERT_TRUE(scaled.ok()) << scaled.status();
  for (size_t i = 0; i < mlp(0).size(); ++i)
    ASSERT_EQ(scaled->activations[layers + 2][i], 0.5f * mlp(0)[i]);
}

std::string Slug(std::string n) {
  for (char& ch : n)
    ch = std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
  return n;
}

// The instantiations are named Cpu/... and Cuda/... so that CMake labels them
// unit and gpu.
INSTANTIATE_TEST_SUITE_P(
    Cpu, Gemma23ActivationsTest,
    ::testing::Combine(::testing::Values(testing::kCpuUnderTest),
                       ::testing::ValuesIn(testing::Gemma23TinyModels())),
    [](const auto& info) { return Slug(std::get<1>(info.param).name); });
INSTANTIATE_TEST_SUITE_P(
    Cuda, Gemma23ActivationsTest,
    ::testing::Combine(::testing::Values(testing::kCudaF32UnderTest),
                       ::testing::ValuesIn(testing::Gemma23TinyModels())),
    [](const auto& info) { return Slug(std::get<1>(info.param).name); });

std::vector<ActivationsCase> Cases(const BackendUnderTest& b) {
  return {{b, "tiny-mha"}, {b, "tiny-mqa"}};
}
INSTANTIATE_TEST_SUITE_P(Cpu, ActivationsTest,
                         ::testing::ValuesIn(Cases(testing::kCpuUnderTest)),
                         [](const auto& info) { return Slug(info.param.model); });
INSTANTIATE_TEST_SUITE_P(Cuda, ActivationsTest,
                         ::testing::ValuesIn(Cases(testing::kCudaF32UnderTest)),
                         [](const auto& info) { return Slug(info.param.model); });

}  // namespace
}  // namespace gemma
