// Requests for several outputs: beam search answers every beam, best first, and one beam is greedy; several inputs
// with n samples each answer in order, unary and streamed, each output as its solo run.
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "router/router_test_fixture.h"

namespace gemma {
namespace {

TEST_F(RouterTest, BeamSearchAnswersEveryBeamBestFirstAndOneBeamIsGreedy) {
  v1::GenerateRequest greedy = Ids({2, 651, 1320, 826, 2534}, 8);
  v1::GenerateResponse want;
  grpc::ClientContext c0;
  ASSERT_TRUE(Client()->Generate(&c0, greedy, &want).ok());

  v1::GenerateRequest one = greedy;
  one.mutable_parameters()->set_num_beams(1);
  one.mutable_parameters()->set_early_stopping(true);
  v1::GenerateResponse got;
  grpc::ClientContext c1;
  ASSERT_TRUE(Client()->Generate(&c1, one, &got).ok());
  ASSERT_EQ(got.tokens_size(), want.tokens_size());
  for (int i = 0; i < want.tokens_size(); ++i) EXPECT_EQ(got.tokens(i).id(), want.tokens(i).id()) << i;
  EXPECT_EQ(got.text(), want.text());
  ASSERT_EQ(got.completions_size(), 1);

  v1::GenerateRequest three = greedy;
  three.mutable_parameters()->set_num_beams(3);
  three.mutable_parameters()->set_length_penalty(0.5f);
  three.mutable_parameters()->set_logprobs(true);
  v1::GenerateResponse beams;
  grpc::ClientContext c2;
  ASSERT_TRUE(Client()->Generate(&c2, three, &beams).ok());
  ASSERT_EQ(beams.completions_size(), 3);
  for (int b = 0; b < 3; ++b) {
    const v1::Completion& c = beams.completions(b);
    EXPECT_EQ(c.index(), b);
    double sum = 0;
    for (const auto& t : c.tokens()) sum += t.logprob();
    EXPECT_NEAR(c.sum_logprob(), sum, 1e-4);
    EXPECT_NEAR(c.score(), c.sum_logprob() / std::pow(c.tokens_size(), 0.5), 1e-6);
    EXPECT_EQ(c.usage().generated_tokens(), c.tokens_size());
    if (b > 0) EXPECT_GE(beams.completions(b - 1).score(), c.score());
  }
  // The top-level answer is the best beam's (router_beam_stream_test streams every beam).
  ASSERT_EQ(beams.tokens_size(), beams.completions(0).tokens_size());
  for (int i = 0; i < beams.tokens_size(); ++i) EXPECT_EQ(beams.tokens(i).id(), beams.completions(0).tokens(i).id());
  EXPECT_EQ(beams.text(), beams.completions(0).text());
  EXPECT_EQ(beams.finish_reason(), beams.completions(0).finish_reason());
}

TEST_F(RouterTest, SeveralInputsAndSamplesAnswerInOrderAsTheirSoloRuns) {
  v1::GenerateRequest req;
  req.add_inputs()->set_text("The quick brown fox");
  auto* ids = req.add_inputs()->mutable_token_ids();
  for (int id : {2, 651, 1320, 826}) ids->add_ids(id);
  auto* p = req.mutable_parameters();
  p->set_max_new_tokens(6);
  p->set_temperature(0.9f);
  p->set_seed(41);
  p->set_n(3);
  v1::GenerateResponse all;
  grpc::ClientContext ctx;
  ASSERT_TRUE(Client()->Generate(&ctx, req, &all).ok());
  ASSERT_EQ(all.completions_size(), 6);
  std::set<std::vector<int>> distinct;
  for (int k = 0; k < 6; ++k) {
    const v1::Completion& c = all.completions(k);
    EXPECT_EQ(c.input_index(), k / 3);
    EXPECT_EQ(c.index(), k % 3);
    EXPECT_EQ(c.seed(), 41u + k % 3);
    // The same input and seed alone.
    v1::GenerateRequest solo;
    *solo.mutable_input() = req.inputs(k / 3);
    *solo.mutable_parameters() = req.parameters();
    solo.mutable_parameters()->set_n(0);
    solo.mutable_parameters()->set_seed(41 + k % 3);
    v1::GenerateResponse want;
    grpc::ClientContext c1;
    ASSERT_TRUE(Client()->Generate(&c1, solo, &want).ok());
    std::vector<int> got_ids, want_ids;
    for (const auto& t : c.tokens()) got_ids.push_back(t.id());
    for (const auto& t : want.tokens()) want_ids.push_back(t.id());
    EXPECT_EQ(got_ids, want_ids) << "completion " << k;
    EXPECT_EQ(c.text(), want.text());
    EXPECT_EQ(c.finish_reason(), want.finish_reason());
    distinct.insert(got_ids);
  }
  EXPECT_GT(distinct.size(), 3u);
  EXPECT_EQ(all.text(), all.completions(0).text());

  // Streamed: every event tagged with its output, one final event each, the same tokens.
  grpc::ClientContext sctx;
  auto reader = Client()->GenerateStream(&sctx, req);
  v1::GenerateStreamResponse event;
  std::map<std::pair<int, int>, std::vector<int>> streamed;
  std::map<std::pair<int, int>, std::string> texts;
  int finals = 0;
  while (reader->Read(&event)) {
    if (event.has_token()) {
      const auto key = std::make_pair(event.token().input_index(), event.token().index());
      streamed[key].push_back(event.token().token().id());
      texts[key] += event.token().text_delta();
    } else {
      ++finals;
      const auto key = std::make_pair(event.final().input_index(), event.final().index());
      EXPECT_EQ(event.final().usage().generated_tokens(), static_cast<int>(streamed[key].size()));
    }
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(finals, 6);
  for (int k = 0; k < 6; ++k) {
    std::vector<int> ids;
    for (const auto& t : all.completions(k).tokens()) ids.push_back(t.id());
    const auto key = std::make_pair(k / 3, k % 3);
    EXPECT_EQ(streamed[key], ids) << k;
    EXPECT_EQ(texts[key], all.completions(k).text()) << k;
  }
}

}  // namespace
}  // namespace gemma
