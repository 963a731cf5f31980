// Activations read out and interventions applied through a real router and worker on tiny-mha, against the
// references of gemma-activations-tiny: Score's activations (f32 and bf16, all or some positions), ScoreStream's
// one message per activation, the router's caps, bad points refused by name, a steered generation and an ablated
// head's scores.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "router/router_test_support.h"
#include "shard/model/dtype.h"

namespace gemma {
namespace {

constexpr int kHidden = 128;

std::string ActivationsDir() {
  const std::string dir = testing::GemmaActivationsTinyDir();
  EXPECT_FALSE(dir.empty()) << "gemma-activations-tiny is absent: the served activation checks cannot run";
  return dir;
}

std::vector<float> ReadF32(const std::string& path) {
  const std::string bytes = testing::ReadFile(path);
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

std::vector<float> Reference(const std::string& name) {
  return ReadF32(ActivationsDir() + "/tiny-mha/fox/" + name + ".f32.bin");
}

std::vector<int> FoxIds() {
  return nlohmann::json::parse(testing::ReadFile(ActivationsDir() + "/tiny-mha/fox/hidden_embedding.json"))["ids"]
      .get<std::vector<int>>();
}

std::vector<float> Values(const v1::Activation& a) {
  if (a.dtype() == v1::ACTIVATION_DTYPE_BFLOAT16) {
    std::vector<float> out(a.data().size() / 2);
    for (size_t i = 0; i < out.size(); ++i) {
      uint16_t bits;
      std::memcpy(&bits, a.data().data() + 2 * i, 2);
      out[i] = Bf16ToF32(bits);
    }
    return out;
  }
  std::vector<float> out(a.data().size() / sizeof(float));
  std::memcpy(out.data(), a.data().data(), a.data().size());
  return out;
}

// Rows `positions` of `want` ([seq, kHidden]) against `got` ([positions, kHidden]), each within `tolerance` of its
// reference row's L2 norm.
void ExpectRowsNear(const std::vector<float>& got, const std::vector<float>& want, const std::vector<int>& positions,
                    double tolerance, const std::string& what) {
  ASSERT_EQ(got.size(), positions.size() * kHidden) << what;
  double worst = 0;
  for (size_t r = 0; r < positions.size(); ++r) {
    const float* ref = want.data() + static_cast<size_t>(positions[r]) * kHidden;
    double norm = 0, diff = 0;
    for (int j = 0; j < kHidden; ++j) {
      norm += static_cast<double>(ref[j]) * ref[j];
      diff = std::max(diff, std::abs(static_cast<double>(got[r * kHidden + j]) - ref[j]));
    }
    worst = std::max(worst, diff / std::sqrt(norm));
  }
  EXPECT_LE(worst, tolerance) << what;
}

v1::ScoreRequest Fox() {
  v1::ScoreRequest r;
  for (int id : FoxIds()) r.mutable_input()->mutable_token_ids()->add_ids(id);
  return r;
}

void AddPoint(v1::ScoreRequest& r, v1::ActivationKind kind, int index) {
  auto* p = r.mutable_activations()->add_points();
  p->set_kind(kind);
  p->set_index(index);
}

grpc::Status Score(v1::Gemma::Stub& stub, const v1::ScoreRequest& req, v1::ScoreResponse* resp) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  return stub.Score(&ctx, req, resp);
}

std::vector<int> All(int n) {
  std::vector<int> out(n);
  for (int i = 0; i < n; ++i) out[i] = i;
  return out;
}

// The suite's cluster: caps small enough that the fox prompt's seven activations (68 kB in f32) pass the unary
// message size and a 40-token request's pass the activation cap.
class RouterActivationsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    worker_ = new OwnWorker(StartOwnWorker(GemmaTinyDir() + "/tiny-mha"));
    router_ =
        new RouterProcess(StartRouter({worker_->port}, {"--max_activation_bytes=100000", "--max_message_bytes=40000"}));
    ASSERT_TRUE(router_->WaitForHealthyGroups(1));
  }
  static void TearDownTestSuite() {
    delete router_;
    delete worker_;
  }
  v1::Gemma::Stub& stub() { return *router_->stub; }

  static OwnWorker* worker_;
  static RouterProcess* router_;
};
OwnWorker* RouterActivationsTest::worker_ = nullptr;
RouterProcess* RouterActivationsTest::router_ = nullptr;

TEST_F(RouterActivationsTest, ScoreReadsEveryResidualAndLayerOutputsAsTheReference) {
  v1::ScoreRequest req = Fox();
  req.mutable_activations()->set_all_residual(true);
  v1::ScoreResponse resp;
  grpc::Status s = Score(stub(), req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  const int len = static_cast<int>(FoxIds().size());
  EXPECT_EQ(resp.logprobs_size(), len - 1);
  ASSERT_EQ(resp.activations_size(), 3);
  const char* names[] = {"hidden_embedding", "hidden_after_layer_0", "hidden_final_norm"};
  for (int i = 0; i < 3; ++i) {
    const v1::Activation& a = resp.activations(i);
    EXPECT_EQ(a.kind(), v1::ACTIVATION_KIND_RESIDUAL);
    EXPECT_EQ(a.index(), i);
    EXPECT_EQ(std::vector<int>(a.shape().begin(), a.shape().end()), (std::vector<int>{len, kHidden}));
    EXPECT_EQ(std::vector<int>(a.positions().begin(), a.positions().end()), All(len));
    ExpectRowsNear(Values(a), Reference(names[i]), All(len), 1e-5, names[i]);
  }

  v1::ScoreRequest layers = Fox();
  AddPoint(layers, v1::ACTIVATION_KIND_ATTENTION_OUTPUT, 1);
  AddPoint(layers, v1::ACTIVATION_KIND_MLP_OUTPUT, 0);
  s = Score(stub(), layers, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(resp.activations_size(), 2);
  EXPECT_EQ(resp.activations(0).kind(), v1::ACTIVATION_KIND_ATTENTION_OUTPUT);
  ExpectRowsNear(Values(resp.activations(0)), Reference("attn_output_layer_1"), All(len), 1e-5, "attention 1");
  EXPECT_EQ(resp.activations(1).kind(), v1::ACTIVATION_KIND_MLP_OUTPUT);
  ExpectRowsNear(Values(resp.activations(1)), Reference("mlp_output_layer_0"), All(len), 1e-5, "mlp 0");
}

TEST_F(RouterActivationsTest, PositionsSubsetAndBfloat16) {
  v1::ScoreRequest req = Fox();
  AddPoint(req, v1::ACTIVATION_KIND_RESIDUAL, 1);
  const std::vector<int> positions = {0, 5, 18};
  for (int p : positions) req.mutable_activations()->add_positions(p);
  v1::ScoreResponse f32;
  grpc::Status s = Score(stub(), req, &f32);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(f32.activations_size(), 1);
  EXPECT_EQ(std::vector<int>(f32.activations(0).positions().begin(), f32.activations(0).positions().end()), positions);
  EXPECT_EQ(f32.activations(0).shape(0), 3);
  const std::vector<float> want = Reference("hidden_after_layer_0");
  ExpectRowsNear(Values(f32.activations(0)), want, positions, 1e-5, "positions 0, 5, 18");

  req.mutable_activations()->set_dtype(v1::ACTIVATION_DTYPE_BFLOAT16);
  v1::ScoreResponse bf16;
  s = Score(stub(), req, &bf16);
  ASSERT_TRUE(s.ok()) << s.error_message();
  const v1::Activation& a = bf16.activations(0);
  EXPECT_EQ(a.dtype(), v1::ACTIVATION_DTYPE_BFLOAT16);
  ASSERT_EQ(a.data().size(), 3u * kHidden * 2);
  // The f32 values rounded to nearest even, bit for bit; within bf16's half step (2^-9 relative) of the reference.
  const std::vector<float> exact = Values(f32.activations(0));
  for (size_t i = 0; i < exact.size(); ++i) {
    uint16_t bits;
    std::memcpy(&bits, a.data().data() + 2 * i, 2);
    ASSERT_EQ(bits, F32ToBf16(exact[i])) << i;
  }
  ExpectRowsNear(Values(a), want, positions, 1.0 / 256, "bf16");
}

TEST_F(RouterActivationsTest, ScoreStreamSendsScoresThenOneMessagePerActivation) {
  v1::ScoreRequest req = Fox();
  req.mutable_activations()->set_all_residual(true);
  for (int layer = 0; layer < 2; ++layer) {
    AddPoint(req, v1::ACTIVATION_KIND_ATTENTION_OUTPUT, layer);
    AddPoint(req, v1::ACTIVATION_KIND_MLP_OUTPUT, layer);
  }
  // Seven activations (68 kB) pass the router's 40 kB message size: unary Score points to ScoreStream.
  v1::ScoreResponse unary;
  grpc::Status s = Score(stub(), req, &unary);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("ScoreStream"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("40000"), std::string::npos) << s.error_message();

  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto reader = stub().ScoreStream(&ctx, req);
  std::vector<v1::ScoreStreamResponse> messages;
  for (v1::ScoreStreamResponse m; reader->Read(&m);) messages.push_back(m);
  s = reader->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(messages.size(), 8u);
  ASSERT_TRUE(messages[0].has_scores());
  EXPECT_EQ(messages[0].scores().activations_size(), 0);
  v1::ScoreResponse plain;
  ASSERT_TRUE(Score(stub(), Fox(), &plain).ok());
  EXPECT_EQ(messages[0].scores().logprobs_size(), plain.logprobs_size());
  for (int i = 0; i < plain.logprobs_size(); ++i) EXPECT_EQ(messages[0].scores().logprobs(i), plain.logprobs(i));
  const int len = static_cast<int>(FoxIds().size());
  const char* names[] = {"hidden_embedding",   "hidden_after_layer_0", "hidden_final_norm", "attn_output_layer_0",
                         "mlp_output_layer_0", "attn_output_layer_1",  "mlp_output_layer_1"};
  for (int i = 0; i < 7; ++i) {
    ASSERT_TRUE(messages[i + 1].has_activation()) << i;
    ExpectRowsNear(Values(messages[i + 1].activation()), Reference(names[i]), All(len), 1e-5, names[i]);
  }
}

TEST_F(RouterActivationsTest, WholeLogitsRowsCountAgainstTheActivationCap) {
  v1::ScoreRequest req;
  for (int i = 0; i < 10; ++i) req.mutable_input()->mutable_token_ids()->add_ids(i == 0 ? 2 : 100 + i);
  req.set_mode(v1::SCORING_MODE_LOGITS);
  req.set_top_logits(-1);
  v1::ScoreResponse resp;
  grpc::Status s = Score(stub(), req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("the logits asked take 147456 bytes"), std::string::npos) << s.error_message();  // 9 x 4096 x 4
  EXPECT_NE(s.error_message().find("--max_activation_bytes) is 100000"), std::string::npos) << s.error_message();
  // Five tokens: 65536 bytes, under the cap but past the unary message size; ScoreStream answers.
  req.mutable_input()->mutable_token_ids()->mutable_ids()->Truncate(5);
  s = Score(stub(), req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("--max_message_bytes"), std::string::npos) << s.error_message();
  grpc::ClientContext ctx;
  auto reader = stub().ScoreStream(&ctx, req);
  v1::ScoreStreamResponse m;
  ASSERT_TRUE(reader->Read(&m));
  EXPECT_EQ(m.scores().logits_data().size(), 4u * 4096 * 4);
  EXPECT_EQ(m.scores().logits_shape(0), 4);
  EXPECT_FALSE(reader->Read(&m));
  EXPECT_TRUE(reader->Finish().ok());
}

TEST_F(RouterActivationsTest, ActivationCapRefusesNamingCapAndSize) {
  v1::ScoreRequest req;
  for (int i = 0; i < 40; ++i) req.mutable_input()->mutable_token_ids()->add_ids(i == 0 ? 2 : 100 + i);
  req.mutable_activations()->set_all_residual(true);
  for (int layer = 0; layer < 2; ++layer) {
    AddPoint(req, v1::ACTIVATION_KIND_ATTENTION_OUTPUT, layer);
    AddPoint(req, v1::ACTIVATION_KIND_MLP_OUTPUT, layer);
  }
  v1::ScoreResponse resp;
  const grpc::Status s = Score(stub(), req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("143360"), std::string::npos) << s.error_message();  // 7 x 40 x 128 x 4
  EXPECT_NE(s.error_message().find("--max_activation_bytes) is 100000"), std::string::npos) << s.error_message();
  // Half the bytes in bf16: under the cap, but past the unary message size; ScoreStream answers.
  req.mutable_activations()->set_dtype(v1::ACTIVATION_DTYPE_BFLOAT16);
  grpc::ClientContext ctx;
  auto reader = stub().ScoreStream(&ctx, req);
  int messages = 0;
  for (v1::ScoreStreamResponse m; reader->Read(&m);) ++messages;
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(messages, 8);
}

TEST_F(RouterActivationsTest, BadPointsAndPositionsAreRefusedByName) {
  struct Case {
    v1::ActivationKind kind;
    int index;
    int position;
    std::string want;
  };
  const std::vector<Case> cases = {
      {v1::ACTIVATION_KIND_RESIDUAL, 3, 0, "activations.points[0].index is 3 for RESIDUAL; allowed: 0 to 2"},
      {v1::ACTIVATION_KIND_RESIDUAL, -1, 0, "activations.points[0].index is -1 for RESIDUAL; allowed: 0 to 2"},
      {v1::ACTIVATION_KIND_ATTENTION_OUTPUT, 2, 0,
       "activations.points[0].index is 2 for ATTENTION_OUTPUT; allowed: 0 to 1"},
      {v1::ACTIVATION_KIND_MLP_OUTPUT, 2, 0, "activations.points[0].index is 2 for MLP_OUTPUT; allowed: 0 to 1"},
      {static_cast<v1::ActivationKind>(7), 0, 0, "activations.points[0].kind is 7"},
      {v1::ACTIVATION_KIND_RESIDUAL, 0, 19, "activations.positions[0] is 19; allowed: 0 to 18"},
  };
  for (const Case& c : cases) {
    v1::ScoreRequest req = Fox();
    AddPoint(req, c.kind, c.index);
    req.mutable_activations()->add_positions(c.position);
    v1::ScoreResponse resp;
    const grpc::Status s = Score(stub(), req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.want;
    EXPECT_NE(s.error_message().find(c.want), std::string::npos) << s.error_message();
  }
  v1::ScoreRequest twice = Fox();
  twice.mutable_activations()->set_all_residual(true);
  AddPoint(twice, v1::ACTIVATION_KIND_RESIDUAL, 1);
  v1::ScoreResponse resp;
  grpc::Status s = Score(stub(), twice, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("activations.points[0] (RESIDUAL 1) is asked twice"), std::string::npos)
      << s.error_message();
  v1::ScoreRequest order = Fox();
  AddPoint(order, v1::ACTIVATION_KIND_RESIDUAL, 1);
  order.mutable_activations()->add_positions(4);
  order.mutable_activations()->add_positions(4);
  s = Score(stub(), order, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("activations.positions[1] is 4 after 4"), std::string::npos) << s.error_message();
  v1::ScoreRequest many = Fox();
  for (int i = 0; i < 1025; ++i) AddPoint(many, v1::ACTIVATION_KIND_RESIDUAL, 0);
  s = Score(stub(), many, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("allowed: up to 1024"), std::string::npos) << s.error_message();
}

TEST_F(RouterActivationsTest, SteeredGenerationsMatchTheReference) {
  const std::vector<float> v = ReadF32(ActivationsDir() + "/steering_vector.f32.bin");
  ASSERT_EQ(v.size(), static_cast<size_t>(kHidden));
  const auto gens = nlohmann::json::parse(
      testing::ReadFile(ActivationsDir() + "/tiny-mha/interventions/steer_layer0/generations.json"));
  for (const auto& g : gens["results"]) {
    const auto want = g["generated_ids"].get<std::vector<int>>();
    v1::GenerateRequest req = Ids(g["prompt_ids"].get<std::vector<int>>(), static_cast<int>(want.size()));
    auto* steer = req.add_interventions()->mutable_steer();
    steer->set_layer(0);
    steer->mutable_vector()->Add(v.begin(), v.end());
    v1::GenerateResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    const grpc::Status s = stub().Generate(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(TokenIds(resp), want) << g["prompt"];
  }
}

TEST_F(RouterActivationsTest, AblatedHeadScoresMatchTheReference) {
  const auto scores =
      nlohmann::json::parse(testing::ReadFile(ActivationsDir() + "/tiny-mha/interventions/scores.json"));
  for (const auto& p : scores["prompts"]) {
    if (p["intervention"] != "ablate_layer1_head1") continue;
    v1::ScoreRequest req;
    for (int id : p["ids"].get<std::vector<int>>()) req.mutable_input()->mutable_token_ids()->add_ids(id);
    auto* ablate = req.add_interventions()->mutable_ablate_head();
    ablate->set_layer(1);
    ablate->set_head(1);
    v1::ScoreResponse resp;
    const grpc::Status s = Score(stub(), req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    const auto want = p["token_logprobs"].get<std::vector<double>>();
    ASSERT_EQ(resp.logprobs_size(), static_cast<int>(want.size()));
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(resp.logprobs(static_cast<int>(i)), want[i], 1e-4) << i;
    return;
  }
  FAIL() << "scores.json has no ablate_layer1_head1 entry";
}

}  // namespace
}  // namespace gemma
