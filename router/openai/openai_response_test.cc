#include "router/openai/openai_response.h"

#include <nlohmann/json.hpp>

#include "gtest/gtest.h"

namespace gemma::openai {
namespace {

using nlohmann::json;

v1::GeneratedToken Token(int32_t id, float logprob) {
  v1::GeneratedToken t;
  t.set_id(id);
  t.set_logprob(logprob);
  return t;
}

// Tokens are listed by their own bytes: a piece's leading space kept, a lone byte of a longer character written as
// OpenAI writes it, with its real byte in `bytes`; completion offsets count bytes of the text.
TEST(OpenAiResponseTest, LogprobTokensAreTheTokensOwnBytes) {
  ResponseContext c;
  c.id = "chatcmpl-1";
  c.model = "m";
  c.chat = true;
  c.logprobs = true;
  c.vocabulary = structured::Vocabulary::FromTokenBytes({"a", " the", "\xE2", std::nullopt});
  v1::GenerateResponse r;
  r.set_text(" the\xE2");
  *r.add_tokens() = Token(1, -0.5f);
  *r.add_tokens() = Token(2, -1.5f);
  r.set_finish_reason(v1::FINISH_REASON_LENGTH);
  const json chat = json::parse(ResponseBody(c, {r}, {}, 1, {3, 2}));
  const json& content = chat["choices"][0]["logprobs"]["content"];
  EXPECT_EQ(content[0]["token"], " the");
  EXPECT_EQ(content[0]["bytes"], json::array({32, 116, 104, 101}));
  EXPECT_EQ(content[1]["token"], "bytes:\\xe2");
  EXPECT_EQ(content[1]["bytes"], json::array({226}));
  EXPECT_EQ(chat["usage"]["total_tokens"], 5);
  EXPECT_EQ(chat["choices"][0]["finish_reason"], "length");

  c.chat = false;
  const json completion = json::parse(ResponseBody(c, {r}, {"a"}, 1, {3, 2}));
  const json& lp = completion["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"], json::array({" the", "bytes:\\xe2"}));
  EXPECT_EQ(lp["text_offset"], json::array({1, 5})) << "after the echoed \"a\", then 4 bytes of \" the\"";
  EXPECT_EQ(completion["choices"][0]["text"], "a the\xEF\xBF\xBD") << "JSON is UTF-8: an incomplete character is U+FFFD";
}

TEST(OpenAiResponseTest, StreamChunksHaveOpenAisShape) {
  ResponseContext c;
  c.id = "cmpl-1";
  c.model = "m";
  const std::string chunk = TextChunk(c, 2, "hi", {}, 7);
  ASSERT_EQ(chunk.substr(0, 6), "data: ");
  ASSERT_EQ(chunk.substr(chunk.size() - 2), "\n\n");
  const json j = json::parse(chunk.substr(6));
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["index"], 2);
  EXPECT_TRUE(j["choices"][0]["finish_reason"].is_null());
  const json end = json::parse(FinishChunk(c, 2, v1::FINISH_REASON_EOS).substr(6));
  EXPECT_EQ(end["choices"][0]["finish_reason"], "stop");
  const json usage = json::parse(UsageChunk(c, {4, 6}).substr(6));
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["total_tokens"], 10);
  c.chat = true;
  const json role = json::parse(RoleChunk(c, 0).substr(6));
  EXPECT_EQ(role["object"], "chat.completion.chunk");
  EXPECT_EQ(role["choices"][0]["delta"]["role"], "assistant");
}

TEST(OpenAiResponseTest, BestOfKeepsTheNHighestCumulativeLogprobsOfEachPrompt) {
  auto candidate = [](std::vector<float> logprobs, const std::string& text) {
    v1::GenerateResponse r;
    r.set_text(text);
    for (float lp : logprobs) r.add_tokens()->set_logprob(lp);
    return r;
  };
  // Two prompts of three candidates each; "b" and "c" tie and keep their order.
  std::vector<v1::GenerateResponse> all = {candidate({-1, -2}, "a"), candidate({-0.5f}, "b"),
                                           candidate({-0.25f, -0.25f}, "c"), candidate({-3}, "d"),
                                           candidate({-9}, "e"), candidate({-0.1f, -0.1f, -0.1f}, "f")};
  EXPECT_DOUBLE_EQ(CumulativeLogprob(all[0]), -3.0);
  const auto best = BestOf(all, 3, 2);
  ASSERT_EQ(best.size(), 4u);
  EXPECT_EQ(best[0].text(), "b");
  EXPECT_EQ(best[1].text(), "c");
  EXPECT_EQ(best[2].text(), "f");
  EXPECT_EQ(best[3].text(), "d");
  EXPECT_EQ(BestOf(all, 2, 2).size(), 6u) << "best_of == n: every candidate, in order";
}

}  // namespace
}  // namespace gemma::openai
