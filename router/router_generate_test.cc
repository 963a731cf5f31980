// What Generate and GenerateStream answer for one output: the reference tokens, a stream equal to the unary answer
// and ending with its final event, 64 concurrent streams equal to their solo runs, one event per token when a stop
// sequence holds text back, and penalized generation the same cold and from the prefix cache.
#include <algorithm>
#include <future>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "router/router_test_fixture.h"

namespace gemma {
namespace {

// The worker keeps a penalized sequence's history: a run that starts from the prefix cache (its first row brings
// the history) gives the tokens of a cold run, and the penalties do change them.
TEST_F(RouterTest, PenalizedGenerationIsTheSameColdAndFromThePrefixCache) {
  std::vector<int> prompt = {2};
  for (int i = 1; i < 40; ++i) prompt.push_back(2000 + (i * 53) % 2000);
  v1::GenerateRequest req = Ids(prompt, 48);
  auto generate = [&](const v1::GenerateRequest& r) {
    v1::GenerateResponse resp;
    grpc::ClientContext ctx;
    EXPECT_TRUE(Client()->Generate(&ctx, r, &resp).ok());
    return TokenIds(resp);
  };
  const std::vector<int> plain = generate(req);
  req.mutable_parameters()->set_repetition_penalty(1.6f);
  req.mutable_parameters()->set_presence_penalty(0.4f);
  req.mutable_parameters()->set_frequency_penalty(0.6f);
  const std::vector<int> cold = generate(req);
  EXPECT_NE(cold, plain);
  EXPECT_EQ(generate(req), cold);
}

TEST_F(RouterTest, StreamSendsOneTokenEventPerTokenWhenTextWasHeldBack) {
  v1::GenerateRequest req = Ids({2, 3791, 323}, 16);
  v1::GenerateResponse unary;
  grpc::ClientContext ctx;
  ASSERT_TRUE(Client()->Generate(&ctx, req, &unary).ok());
  ASSERT_FALSE(unary.text().empty());
  // A stop sequence that starts with the text's last character: that character is held back to the end.
  size_t last = unary.text().size() - 1;
  while (last > 0 && (static_cast<unsigned char>(unary.text()[last]) & 0xc0) == 0x80) --last;
  req.mutable_parameters()->add_stop_sequences(unary.text().substr(last) + "QQQ");
  grpc::ClientContext sctx;
  auto reader = Client()->GenerateStream(&sctx, req);
  v1::GenerateStreamResponse event;
  int token_events = 0, other_events = 0, finals = 0;
  std::string text;
  while (reader->Read(&event)) {
    if (event.has_final()) {
      ++finals;
    } else if (event.token().has_token()) {
      ++token_events;
    } else {
      ++other_events;
    }
    text += event.token().text_delta();
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(token_events, 16);
  EXPECT_EQ(other_events, 0) << "an event without a token";
  EXPECT_EQ(finals, 1);
  EXPECT_EQ(text, unary.text());
}

TEST_F(RouterTest, GreedyGenerationMatchesReference) {
  const auto gens = nlohmann::json::parse(testing::ReadFile(GemmaTinyDir() + "/reference/tiny-mqa/generations.json"));
  for (const auto& g : gens["results"]) {
    v1::GenerateResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(Client()->Generate(&ctx, Ids(g["prompt_ids"], 32), &resp).ok());
    const auto ref = g["generated_ids"].get<std::vector<int>>();
    const auto got = TokenIds(resp);
    ASSERT_EQ(got.size(), 32u);
    const size_t compare = g["first_step_with_margin_below_1e-3"].is_null() ? 32 : g["first_step_with_margin_below_1e-3"].get<size_t>();
    EXPECT_TRUE(std::equal(ref.begin(), ref.begin() + compare, got.begin())) << g["prompt"];
    EXPECT_EQ(resp.finish_reason(), v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(resp.usage().generated_tokens(), 32);
  }
}

// min_new_tokens (vLLM's min_tokens) holds back the tokens that would end the request until that many are
// generated: here greedy's own first token, made a stop id. Each of n samples counts its own.
TEST_F(RouterTest, MinNewTokensHoldsBackTheStopsUntilReached) {
  v1::GenerateRequest req;
  req.mutable_input()->set_text("In the quiet harbor town");
  req.mutable_parameters()->set_max_new_tokens(8);
  v1::GenerateResponse free_run;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(Client()->Generate(&ctx, req, &free_run).ok());
  }
  const int32_t first = free_run.tokens(0).id();
  req.mutable_parameters()->add_stop_token_ids(first);
  v1::GenerateResponse stopped;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(Client()->Generate(&ctx, req, &stopped).ok());
  }
  EXPECT_EQ(stopped.tokens_size(), 1);
  EXPECT_EQ(stopped.finish_reason(), v1::FINISH_REASON_STOP_SEQUENCE);
  req.mutable_parameters()->set_min_new_tokens(4);
  // Two samples drawing apart (seeds 7 and 8): a constraint they shared would count both one's tokens.
  req.mutable_parameters()->set_n(2);
  req.mutable_parameters()->set_temperature(1.0f);
  req.mutable_parameters()->set_seed(7);
  v1::GenerateResponse held;
  grpc::ClientContext ctx;
  ASSERT_TRUE(Client()->Generate(&ctx, req, &held).ok());
  ASSERT_EQ(held.completions_size(), 2);
  for (const auto& c : held.completions()) {
    ASSERT_GE(c.tokens_size(), 4);
    for (int i = 0; i < 4; ++i) EXPECT_NE(c.tokens(i).id(), first) << "token " << i;
  }
  req.mutable_parameters()->set_min_new_tokens(9);
  grpc::ClientContext too_many;
  const grpc::Status s = Client()->Generate(&too_many, req, &held);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("min_new_tokens 9 exceeds max_new_tokens 8"), std::string::npos)
      << s.error_message();
}

TEST_F(RouterTest, StreamingEqualsUnaryAndEndsWithFinal) {
  v1::GenerateRequest req;
  req.mutable_input()->set_text("In the quiet harbor town");
  req.mutable_parameters()->set_max_new_tokens(24);
  v1::GenerateResponse unary;
  grpc::ClientContext ctx;
  ASSERT_TRUE(Client()->Generate(&ctx, req, &unary).ok());
  v1::FinalEvent final_event;
  const auto [ids, text] = Stream(req, &final_event);
  EXPECT_EQ(ids, TokenIds(unary));
  EXPECT_EQ(text, unary.text());
  EXPECT_EQ(final_event.finish_reason(), unary.finish_reason());
  EXPECT_EQ(final_event.usage().generated_tokens(), 24);
}

TEST_F(RouterTest, ConcurrentStreamsEachEqualTheirSoloRun) {
  std::vector<v1::GenerateRequest> reqs;
  for (int i = 0; i < 64; ++i) {
    std::vector<int> prompt = {2};
    for (int k = 0; k < 3 + (i * 7) % 40; ++k) prompt.push_back(100 + (i * 31 + k * 17) % 3900);
    reqs.push_back(Ids(prompt, 4 + i % 12));
  }
  std::vector<std::vector<int>> solo;
  for (const auto& r : reqs) solo.push_back(Stream(r, nullptr).first);
  std::vector<std::future<std::vector<int>>> futures;
  for (const auto& r : reqs) futures.push_back(std::async(std::launch::async, [&, r] { return Stream(r, nullptr).first; }));
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(futures[i].get(), solo[i]) << i;
}

}  // namespace
}  // namespace gemma
