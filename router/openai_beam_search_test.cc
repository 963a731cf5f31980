// vLLM's beam-search extension on the OpenAI-compatible API (use_beam_search, length_penalty, early_stopping)
// against a real router and worker: the n best of best_of beams equal gRPC's beam search, a stream sends every
// returned beam whole once the search ends (best first), and sampling fields are refused by name.
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

class OpenAiBeamSearchTest : public OpenAiRouterTest {
 protected:
  // gRPC's beam search of `prompt` with `beams` beams.
  static v1::GenerateResponse Beams(const std::string& prompt, int beams, int max_new, float length_penalty = 1) {
    v1::GenerateRequest g;
    g.mutable_input()->set_text(prompt);
    g.mutable_parameters()->set_max_new_tokens(max_new);
    g.mutable_parameters()->set_num_beams(beams);
    g.mutable_parameters()->set_length_penalty(length_penalty);
    v1::GenerateResponse r;
    grpc::ClientContext ctx;
    const grpc::Status s = router_->stub->Generate(&ctx, g, &r);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return r;
  }
};

TEST_F(OpenAiBeamSearchTest, TheNBestBeamsOfBestOfAreTheChoices) {
  const json request = {{"model", "tiny"}, {"prompt", {"The quick brown fox", "Once upon a time"}}, {"max_tokens", 8},
                        {"n", 2},          {"best_of", 4},                                          {"use_beam_search", true},
                        {"length_penalty", 0.5}};
  const HttpReply r = Post("/v1/completions", request);
  ASSERT_EQ(r.status, 200) << r.body;
  const json body = json::parse(r.body);
  ASSERT_EQ(body["choices"].size(), 4u);
  int64_t billed = 0;
  const std::vector<std::string> prompts = {"The quick brown fox", "Once upon a time"};
  for (size_t p = 0; p < prompts.size(); ++p) {
    const v1::GenerateResponse want = Beams(prompts[p], 4, 8, 0.5f);
    ASSERT_EQ(want.completions_size(), 4);
    for (int b = 0; b < 2; ++b) {
      const json& choice = body["choices"][p * 2 + b];
      EXPECT_EQ(choice["index"], p * 2 + b);
      EXPECT_EQ(choice["text"], want.completions(b).text()) << "prompt " << p << ", beam " << b;
      billed += want.completions(b).usage().generated_tokens();
    }
  }
  EXPECT_EQ(body["usage"]["completion_tokens"], billed) << "the returned beams' tokens";
}

TEST_F(OpenAiBeamSearchTest, AStreamSendsEveryReturnedBeamWholeBestFirstOnceTheSearchEnds) {
  const json request = {{"model", "tiny"},
                        {"messages", {{{"role", "user"}, {"content", "Tell me a story"}}}},
                        {"max_tokens", 8},
                        {"n", 3},
                        {"use_beam_search", true}};
  const HttpReply unary = Post("/v1/chat/completions", request);
  ASSERT_EQ(unary.status, 200) << unary.body;
  const json whole = json::parse(unary.body);
  ASSERT_EQ(whole["choices"].size(), 3u);
  json streamed = request;
  streamed["stream"] = true;
  const HttpReply stream = Post("/v1/chat/completions", streamed);
  ASSERT_EQ(stream.status, 200) << stream.body;
  const std::vector<std::string> events = EventData(stream.body);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back(), "[DONE]");
  std::vector<std::string> text(3);
  std::vector<int> order;  // the choice of each content or finish chunk, in stream order
  std::vector<bool> finished(3, false);
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json e = json::parse(events[i]);
    const json& c = e["choices"][0];
    const int index = c["index"];
    if (c["delta"].contains("role")) continue;  // the opening chunks
    ASSERT_LT(index, 3);
    EXPECT_FALSE(finished[index]) << "nothing of a beam after its finish chunk";
    if (!c["finish_reason"].is_null()) {
      finished[index] = true;
    } else {
      text[index] += c["delta"]["content"].get<std::string>();
    }
    order.push_back(index);
  }
  EXPECT_TRUE(std::is_sorted(order.begin(), order.end())) << "one beam at a time, best first";
  for (int b = 0; b < 3; ++b) {
    EXPECT_TRUE(finished[b]);
    EXPECT_EQ(text[b], whole["choices"][b]["message"]["content"]) << "beam " << b;
  }
}

TEST_F(OpenAiBeamSearchTest, SamplingFieldsAndBadWidthsAreRefusedByName) {
  const json base = {{"model", "tiny"}, {"prompt", "Hi"}, {"max_tokens", 3}, {"use_beam_search", true}};
  auto refused = [&](json body, const std::string& param, const std::string& words) {
    const HttpReply r = Post("/v1/completions", body);
    EXPECT_EQ(r.status, 400) << r.body;
    const json e = json::parse(r.body, nullptr, false);
    EXPECT_EQ(e["error"]["param"], param) << r.body;
    EXPECT_NE(e["error"]["message"].get<std::string>().find(words), std::string::npos) << r.body;
  };
  json hot = base;
  hot["temperature"] = 0.7;
  refused(hot, "temperature", "cannot be combined with 'use_beam_search'");
  json zero = base;
  zero["temperature"] = 0;
  EXPECT_EQ(Post("/v1/completions", zero).status, 200) << "temperature 0 is what beams do";
  json stop = base;
  stop["stop"] = "x";
  refused(stop, "stop", "allowed: unset");
  json wide = base;
  wide["n"] = 11;
  refused(wide, "n", "allowed with 'use_beam_search': 1..10");
  json alternatives = base;
  alternatives["logprobs"] = 2;
  refused(alternatives, "logprobs", "allowed: unset or 0");
  json penalty = {{"model", "tiny"}, {"prompt", "Hi"}, {"length_penalty", 2}};
  refused(penalty, "length_penalty", "allowed: with 'use_beam_search': true");
}

}  // namespace
}  // namespace gemma
