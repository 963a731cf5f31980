// Score, Tokenize, Detokenize and GetModelInfo through the router: log-probs against the reference, the top
// alternatives of each position, given targets with losses, several inputs with whole rows or the largest logits
// against the reference logits; tokenization both ways and the model's info.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "router/router_test_fixture.h"

namespace gemma {
namespace {

TEST_F(RouterTest, ScoreReturnsTheTopAlternativesOfEachPosition) {
  const auto scores = nlohmann::json::parse(testing::ReadFile(GemmaTinyDir() + "/reference/tiny-mqa/scores.json"));
  const auto ids = scores["prompts"][0]["ids"].get<std::vector<int>>();
  v1::ScoreRequest req;
  for (int id : ids) req.mutable_input()->mutable_token_ids()->add_ids(id);
  req.set_top_logprobs(3);
  v1::ScoreResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(Client()->Score(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.logprobs_size(), static_cast<int>(ids.size()) - 1);
  ASSERT_EQ(resp.top_logprobs_size(), resp.logprobs_size());
  for (int t = 0; t < resp.top_logprobs_size(); ++t) {
    const auto& alts = resp.top_logprobs(t).alternatives();
    ASSERT_EQ(alts.size(), 3) << t;
    EXPECT_GE(alts[0].logprob(), alts[1].logprob());
    EXPECT_GE(alts[1].logprob(), alts[2].logprob());
    EXPECT_GE(alts[0].logprob() + 1e-5, resp.logprobs(t)) << "the most likely token is at least as likely as the actual one";
    for (const auto& alt : alts) {
      if (alt.id() == ids[t + 1]) EXPECT_NEAR(alt.logprob(), resp.logprobs(t), 1e-5);
    }
  }
}

// KerasNLP's scoring modes: target_ids score each position's logits (the last one's too) against a given token,
// and SCORING_MODE_LOSS adds the cross-entropies and their sum. With the next tokens as targets the log-probs are
// plain Score's, one position longer.
TEST_F(RouterTest, ScoreAgainstGivenTargetsWithLosses) {
  const auto scores = nlohmann::json::parse(testing::ReadFile(GemmaTinyDir() + "/reference/tiny-mqa/scores.json"));
  const auto ids = scores["prompts"][0]["ids"].get<std::vector<int>>();
  v1::ScoreRequest plain;
  for (int id : ids) plain.mutable_input()->mutable_token_ids()->add_ids(id);
  v1::ScoreResponse base;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(Client()->Score(&ctx, plain, &base).ok());
  }
  EXPECT_EQ(base.losses_size(), 0) << "losses only in SCORING_MODE_LOSS";
  v1::ScoreRequest req = plain;
  for (size_t t = 0; t + 1 < ids.size(); ++t) req.add_target_ids(ids[t + 1]);
  req.add_target_ids(17);   // the last position, which plain Score cannot score
  req.set_target_ids(2, -1);  // not scored
  req.set_mode(v1::SCORING_MODE_LOSS);
  v1::ScoreResponse resp;
  {
    grpc::ClientContext ctx;
    const grpc::Status s = Client()->Score(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  ASSERT_EQ(resp.logprobs_size(), static_cast<int>(ids.size()));
  ASSERT_EQ(resp.losses_size(), resp.logprobs_size());
  double sum = 0;
  for (int t = 0; t < resp.logprobs_size(); ++t) {
    if (t == 2) {
      EXPECT_EQ(resp.logprobs(t), 0.0f);
    } else if (t + 1 < static_cast<int>(ids.size())) {
      EXPECT_NEAR(resp.logprobs(t), base.logprobs(t), 1e-5) << t;
    } else {
      EXPECT_LT(resp.logprobs(t), 0.0f) << "the last position is scored against its target";
    }
    EXPECT_FLOAT_EQ(resp.losses(t), -resp.logprobs(t)) << t;
    sum += resp.losses(t);
  }
  EXPECT_NEAR(resp.loss_sum(), sum, 1e-4);
  // Bad targets: the wrong count, a token outside the vocabulary, an unknown mode.
  auto refused = [&](v1::ScoreRequest bad, const std::string& expect) {
    v1::ScoreResponse r;
    grpc::ClientContext ctx;
    const grpc::Status s = Client()->Score(&ctx, bad, &r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << expect;
    EXPECT_NE(s.error_message().find(expect), std::string::npos) << s.error_message();
  };
  v1::ScoreRequest short_targets = req;
  short_targets.mutable_target_ids()->RemoveLast();
  refused(short_targets, "one per token");
  v1::ScoreRequest outside = req;
  outside.set_target_ids(0, 1 << 20);
  refused(outside, "outside the vocabulary");
  v1::ScoreRequest mode = plain;
  mode.set_mode(static_cast<v1::ScoringMode>(7));
  refused(mode, "SCORING_MODE_LOSS");
}

TEST_F(RouterTest, ScoreMatchesReference) {
  const auto scores = nlohmann::json::parse(testing::ReadFile(GemmaTinyDir() + "/reference/tiny-mqa/scores.json"));
  const auto& p = scores["prompts"][2];  // rand200: prefilled in chunks of the step budget
  v1::ScoreRequest req;
  for (int id : p["ids"]) req.mutable_input()->mutable_token_ids()->add_ids(id);
  v1::ScoreResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(Client()->Score(&ctx, req, &resp).ok());
  const auto want = p["token_logprobs"].get<std::vector<double>>();
  ASSERT_EQ(resp.logprobs_size(), static_cast<int>(want.size()));
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(resp.logprobs(i), want[i], 1e-4) << i;
}

TEST_F(RouterTest, ScoreListsAndLogitsModeMatchTheReferenceLogits) {
  v1::ScoreRequest req;
  std::vector<std::vector<float>> logits;
  std::vector<std::vector<int>> ids;
  for (const char* name : {"fox", "rand200"}) {  // rand200: prefilled in chunks of the step budget
    const auto side = nlohmann::json::parse(
        testing::ReadFile(GemmaTinyDir() + "/reference/tiny-mqa/logits_" + std::string(name) + ".json"));
    ids.push_back(side["ids"].get<std::vector<int>>());
    auto* input = req.add_inputs()->mutable_token_ids();
    for (int id : ids.back()) input->add_ids(id);
    const std::string bin = testing::ReadFile(GemmaTinyDir() + "/reference/tiny-mqa/logits_" + std::string(name) + ".f32.bin");
    logits.emplace_back(bin.size() / sizeof(float));
    std::memcpy(logits.back().data(), bin.data(), bin.size());
  }
  req.set_mode(v1::SCORING_MODE_LOGITS);
  req.set_top_logits(-1);
  v1::ScoreResponse whole;
  grpc::ClientContext c1;
  ASSERT_TRUE(Client()->Score(&c1, req, &whole).ok());
  ASSERT_EQ(whole.results_size(), 2);
  EXPECT_EQ(whole.logprobs_size(), 0);
  for (int k = 0; k < 2; ++k) {
    const v1::ScoreResponse& r = whole.results(k);
    const int rows = static_cast<int>(ids[k].size()) - 1;
    ASSERT_EQ(r.logits_shape_size(), 2);
    EXPECT_EQ(r.logits_shape(0), rows);
    EXPECT_EQ(r.logits_shape(1), 4096);
    ASSERT_EQ(r.logits_data().size(), static_cast<size_t>(rows) * 4096 * sizeof(float));
    std::vector<float> got(static_cast<size_t>(rows) * 4096);
    std::memcpy(got.data(), r.logits_data().data(), r.logits_data().size());
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(double{got[i]} - logits[k][i]));
    EXPECT_LT(worst, 1e-4) << "input " << k;
    EXPECT_EQ(r.logprobs_size(), rows);
  }
  // The largest logits: the reference's, largest first.
  req.set_top_logits(5);
  v1::ScoreResponse top;
  grpc::ClientContext c2;
  ASSERT_TRUE(Client()->Score(&c2, req, &top).ok());
  ASSERT_EQ(top.results_size(), 2);
  for (int k = 0; k < 2; ++k) {
    const v1::ScoreResponse& r = top.results(k);
    ASSERT_EQ(r.top_logits_size(), static_cast<int>(ids[k].size()) - 1);
    EXPECT_TRUE(r.logits_data().empty());
    for (int t = 0; t < r.top_logits_size(); ++t) {
      const float* row = logits[k].data() + static_cast<size_t>(t) * 4096;
      std::vector<int> order(4096);
      for (int v = 0; v < 4096; ++v) order[v] = v;
      std::partial_sort(order.begin(), order.begin() + 5, order.end(), [&](int a, int b) { return row[a] > row[b]; });
      ASSERT_EQ(r.top_logits(t).alternatives_size(), 5);
      for (int j = 0; j < 5; ++j) {
        EXPECT_NEAR(r.top_logits(t).alternatives(j).logit(), row[order[j]], 1e-4) << k << " " << t << " " << j;
      }
      EXPECT_EQ(r.top_logits(t).alternatives(0).id(), order[0]);
    }
  }
}

TEST_F(RouterTest, TokenizeDetokenizeAndModelInfo) {
  v1::TokenizeRequest treq;
  treq.set_text("Hello");
  treq.set_add_bos(true);
  v1::TokenizeResponse tresp;
  grpc::ClientContext c1;
  ASSERT_TRUE(Client()->Tokenize(&c1, treq, &tresp).ok());
  EXPECT_EQ(std::vector<int>(tresp.ids().begin(), tresp.ids().end()), (std::vector<int>{2, 3791, 323}));
  v1::DetokenizeRequest dreq;
  dreq.add_ids(3791);
  dreq.add_ids(323);
  v1::DetokenizeResponse dresp;
  grpc::ClientContext c2;
  ASSERT_TRUE(Client()->Detokenize(&c2, dreq, &dresp).ok());
  EXPECT_EQ(dresp.text(), "Hello");
  v1::ModelInfo info;
  grpc::ClientContext c3;
  ASSERT_TRUE(Client()->GetModelInfo(&c3, {}, &info).ok());
  EXPECT_EQ(info.vocab_size(), 4096);
  EXPECT_EQ(info.healthy_groups(), 1);
}

}  // namespace
}  // namespace gemma
