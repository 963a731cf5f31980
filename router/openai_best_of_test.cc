// OpenAI's best_of on /v1/completions against a real router and worker: the n best of best_of candidates by
// cumulative log-prob, the same candidates gRPC's n samples draw, every candidate billed, and its refusals.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "gtest/gtest.h"
#include "router/http/test_client.h"
#include "router/openai_test_support.h"
#include "router/router_test_support.h"

namespace gemma {
namespace {

using http::testing::Call;
using http::testing::EventData;
using http::testing::HttpReply;
using nlohmann::json;

class OpenAiBestOfTest : public OpenAiRouterTest {
 protected:
  static HttpReply Post(const json& body) { return OpenAiRouterTest::Post("/v1/completions", body); }

  // The 400 `body` gets, with its param.
  static void ExpectRefused(const json& body, const std::string& param, const std::string& words) {
    const HttpReply r = Post(body);
    EXPECT_EQ(r.status, 400) << r.body;
    const json e = json::parse(r.body, nullptr, false);
    EXPECT_EQ(e["error"]["param"], param) << r.body;
    EXPECT_NE(e["error"]["message"].get<std::string>().find(words), std::string::npos) << r.body;
  }

};

double SumLogprobs(const v1::Completion& c) {
  double sum = 0;
  for (const auto& t : c.tokens()) sum += t.logprob();
  return sum;
}

TEST_F(OpenAiBestOfTest, ReturnsTheNBestOfTheCandidatesGrpcSamplesDraw) {
  // Two prompts, so the ranking is per prompt; a stop token may end some candidates early.
  const json request = {{"model", "tiny"},   {"prompt", {"Once upon a time", "The weather today"}},
                        {"max_tokens", 10},  {"temperature", 1.0},
                        {"seed", 300},       {"n", 2},
                        {"best_of", 5},      {"logprobs", 0}};
  const HttpReply r = Post(request);
  ASSERT_EQ(r.status, 200) << r.body;
  const json body = json::parse(r.body);
  ASSERT_EQ(body["choices"].size(), 4u) << "prompts x n, not prompts x best_of";
  int64_t billed = 0, prompt_tokens = 0;
  const std::vector<std::string> prompts = {"Once upon a time", "The weather today"};
  for (size_t p = 0; p < prompts.size(); ++p) {
    // The same candidates: best_of samples of the prompt, sample i with seed + i.
    v1::GenerateRequest g;
    g.mutable_input()->set_text(prompts[p]);
    g.mutable_parameters()->set_max_new_tokens(10);
    g.mutable_parameters()->set_temperature(1.0f);
    g.mutable_parameters()->set_seed(300);
    g.mutable_parameters()->set_n(5);
    g.mutable_parameters()->set_logprobs(true);
    v1::GenerateResponse all;
    grpc::ClientContext ctx;
    ASSERT_TRUE(router_->stub->Generate(&ctx, g, &all).ok());
    ASSERT_EQ(all.completions_size(), 5);
    std::vector<v1::Completion> ranked(all.completions().begin(), all.completions().end());
    std::stable_sort(ranked.begin(), ranked.end(),
                     [](const auto& a, const auto& b) { return SumLogprobs(a) > SumLogprobs(b); });
    for (const auto& c : ranked) billed += c.usage().generated_tokens();
    prompt_tokens += all.usage().prompt_tokens();
    for (int k = 0; k < 2; ++k) {
      const json& choice = body["choices"][p * 2 + k];
      EXPECT_EQ(choice["index"], p * 2 + k);
      EXPECT_EQ(choice["text"], ranked[k].text()) << "prompt " << p << ", choice " << k;
      double sum = 0;
      for (const json& lp : choice["logprobs"]["token_logprobs"]) sum += lp.get<double>();
      EXPECT_NEAR(sum, SumLogprobs(ranked[k]), 1e-4);
    }
    EXPECT_GT(SumLogprobs(ranked[0]), SumLogprobs(ranked[4])) << "the candidates differ, so the choice matters";
  }
  EXPECT_EQ(body["usage"]["completion_tokens"], billed) << "every candidate's tokens are billed";
  EXPECT_EQ(body["usage"]["prompt_tokens"], prompt_tokens) << "each prompt counted once";
}

TEST_F(OpenAiBestOfTest, WithoutLogprobsTheChoicesCarryNone) {
  const HttpReply r = Post({{"model", "tiny"}, {"prompt", "Hi"}, {"max_tokens", 4}, {"seed", 1}, {"best_of", 3}});
  ASSERT_EQ(r.status, 200) << r.body;
  const json body = json::parse(r.body);
  ASSERT_EQ(body["choices"].size(), 1u);
  EXPECT_TRUE(body["choices"][0]["logprobs"].is_null()) << "ranked on log-probs the client did not ask for";
}

TEST_F(OpenAiBestOfTest, EqualToNItStreamsAsN) {
  const HttpReply r =
      Post({{"model", "tiny"}, {"prompt", "Hi"}, {"max_tokens", 3}, {"n", 2}, {"best_of", 2}, {"stream", true}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(EventData(r.body).back(), "[DONE]");
}

TEST_F(OpenAiBestOfTest, BadValuesAreRefusedNamingTheFieldAndRange) {
  const json base = {{"model", "tiny"}, {"prompt", "Hi"}, {"max_tokens", 3}};
  json fewer = base;
  fewer["n"] = 3;
  fewer["best_of"] = 2;
  ExpectRefused(fewer, "best_of", "allowed: best_of 3..128");
  json zero = base;
  zero["best_of"] = 0;
  ExpectRefused(zero, "best_of", "allowed: 1..128");
  json many = base;
  many["best_of"] = 129;
  ExpectRefused(many, "best_of", "allowed: 1..128");
  json prompts = base;
  prompts["prompt"] = {"a", "b", "c"};
  prompts["best_of"] = 50;
  ExpectRefused(prompts, "best_of", "3 prompts × best_of 50 = 150 candidates; allowed: at most 128");
  json stream = base;
  stream["best_of"] = 2;
  stream["stream"] = true;
  ExpectRefused(stream, "best_of", "not supported with 'stream': true");
  json text = base;
  text["best_of"] = "2";
  ExpectRefused(text, "best_of", "must be an integer");
  const HttpReply chat = Call(http_port_, "POST", "/v1/chat/completions",
                              json{{"model", "tiny"},
                                   {"messages", {{{"role", "user"}, {"content", "x"}}}},
                                   {"best_of", 2}}
                                  .dump());
  EXPECT_EQ(chat.status, 400) << "chat completions have no best_of, as OpenAI's";
  EXPECT_EQ(json::parse(chat.body)["error"]["param"], "best_of");
  EXPECT_NE(chat.body.find("applies to /v1/completions only"), std::string::npos) << chat.body;
}

}  // namespace
}  // namespace gemma
