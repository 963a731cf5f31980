#include "router/request_validation.h"

#include "gtest/gtest.h"

namespace gemma {
namespace {

const ModelLimits kModel{4096, 512};
const RouterLimits kRouter;

v1::GenerateRequest Text(const std::string& text) {
  v1::GenerateRequest r;
  r.mutable_input()->set_text(text);
  return r;
}

void ExpectInvalid(const v1::GenerateRequest& r, const std::string& needle) {
  const absl::Status s = ValidateGenerateRequest(r, kRouter, kModel);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << needle << ": " << s;
  EXPECT_NE(s.message().find(needle), std::string::npos) << s.message();
}

TEST(RequestValidationTest, AcceptsAGoodRequest) {
  auto r = Text("Hello");
  r.mutable_parameters()->set_temperature(0.7f);
  r.mutable_parameters()->set_top_p(0.9f);
  r.mutable_parameters()->add_stop_sequences("\n\n");
  EXPECT_TRUE(ValidateGenerateRequest(r, kRouter, kModel).ok());
}

TEST(RequestValidationTest, RejectsEachBadField) {
  EXPECT_TRUE(ValidateGenerateRequest(Text(""), kRouter, kModel).ok()) << "an empty text is <bos> alone";
  ExpectInvalid(v1::GenerateRequest(), "input is missing");
  ExpectInvalid(Text("bad \xff"), "not valid UTF-8");
  auto r = Text("x");
  r.mutable_parameters()->set_temperature(-0.5f);
  ExpectInvalid(r, "temperature");
  r = Text("x");
  r.mutable_parameters()->set_top_p(1.5f);
  ExpectInvalid(r, "allowed: (0, 1]");
  r = Text("x");
  r.mutable_parameters()->set_top_k(-1);
  ExpectInvalid(r, "top_k");
  r = Text("x");
  r.mutable_parameters()->set_max_new_tokens(5000);
  ExpectInvalid(r, "allowed: 0..4096");
  r = Text("x");
  for (int i = 0; i < 9; ++i) r.mutable_parameters()->add_stop_sequences("s");
  ExpectInvalid(r, "at most 8");
  r = Text("x");
  r.mutable_parameters()->add_stop_sequences(std::string(300, 'a'));
  ExpectInvalid(r, "allowed: 1..256");
  r = Text("x");
  r.mutable_parameters()->add_stop_token_ids(4096);
  ExpectInvalid(r, "outside the vocabulary");
  r = Text("x");
  r.mutable_parameters()->set_top_logprobs(3);
  ExpectInvalid(r, "needs logprobs");
  r = Text("x");
  r.mutable_parameters()->set_presence_penalty(2.5f);
  ExpectInvalid(r, "presence_penalty");
  v1::GenerateRequest ids;
  ids.mutable_input()->mutable_token_ids()->add_ids(2);
  ids.mutable_input()->mutable_token_ids()->add_ids(-3);
  ExpectInvalid(ids, "input.token_ids[1] = -3");
  v1::GenerateRequest chat;
  auto* m = chat.mutable_input()->mutable_chat()->add_messages();
  m->set_role("system");
  m->set_content("be nice");
  ExpectInvalid(chat, "messages[0].role is \"system\": allowed: user, assistant (or model) (this model's chat");
  m->set_role("user");
  auto* again = chat.mutable_input()->mutable_chat()->add_messages();
  again->set_role("user");
  again->set_content("hello?");
  ExpectInvalid(chat, "messages[1].role is \"user\": an assistant (model) turn was due");
}

TEST(RequestValidationTest, Gemma3TakesASystemMessageFirstAndOnlyThere) {
  const ModelLimits gemma3{262144, 32768, /*chat_system_role=*/true};
  v1::GenerateRequest chat;
  auto* sys = chat.mutable_input()->mutable_chat()->add_messages();
  sys->set_role("system");
  sys->set_content("be nice");
  auto* user = chat.mutable_input()->mutable_chat()->add_messages();
  user->set_role("user");
  user->set_content("hi");
  EXPECT_TRUE(ValidateGenerateRequest(chat, kRouter, gemma3).ok());
  const absl::Status no_system = ValidateGenerateRequest(chat, kRouter, kModel);
  EXPECT_NE(no_system.message().find("this model's chat template has no system role"), std::string::npos) << no_system;
  chat.mutable_input()->mutable_chat()->mutable_messages()->SwapElements(0, 1);
  const absl::Status late = ValidateGenerateRequest(chat, kRouter, gemma3);
  EXPECT_TRUE(absl::IsInvalidArgument(late)) << late;
  EXPECT_NE(late.message().find("messages[1].role is \"system\": allowed: user, assistant (or model), and system as "
                                "the first message"), std::string::npos) << late;
}

// Without --max_total_tokens the limit is the model's context: 128k for Gemma 3 4B and up.
TEST(RequestValidationTest, TheDefaultTotalLimitIsTheModelsContext) {
  const ModelLimits long_context{262208, 131072};
  EXPECT_EQ(*ResolveMaxNewTokens(100000, 31072, kRouter, long_context), 31072);
  auto over = ResolveMaxNewTokens(100000, 31073, kRouter, long_context);
  ASSERT_FALSE(over.ok());
  EXPECT_NE(over.status().message().find("exceeds the limit of 131072"), std::string::npos) << over.status();
}

TEST(RequestValidationTest, ResolvesMaxNewTokensAgainstTheContext) {
  EXPECT_EQ(*ResolveMaxNewTokens(10, 0, kRouter, kModel), 256);
  EXPECT_EQ(*ResolveMaxNewTokens(400, 0, kRouter, kModel), 112);
  EXPECT_EQ(*ResolveMaxNewTokens(10, 500, kRouter, kModel), 500);
  auto over = ResolveMaxNewTokens(10, 503, kRouter, kModel);
  ASSERT_FALSE(over.ok());
  EXPECT_NE(over.status().message().find("allowed max_new_tokens: 1..502"), std::string::npos) << over.status();
  EXPECT_FALSE(ResolveMaxNewTokens(512, 1, kRouter, kModel).ok());
  EXPECT_FALSE(ResolveMaxNewTokens(0, 1, kRouter, kModel).ok());
}

TEST(RequestValidationTest, ScoredInputsFitTheRoutersTotalAndTheContext) {
  RouterLimits small = kRouter;
  small.max_total_tokens = 16;
  EXPECT_TRUE(ValidateScoreLength(16, small, kModel).ok());
  auto over = ValidateScoreLength(17, small, kModel);
  EXPECT_NE(over.message().find("allowed: 2..16"), std::string::npos) << over;
  EXPECT_FALSE(ValidateScoreLength(1, kRouter, kModel).ok());
  EXPECT_TRUE(ValidateScoreLength(512, kRouter, kModel).ok());
  EXPECT_FALSE(ValidateScoreLength(513, kRouter, kModel).ok());
}

TEST(RequestValidationTest, Utf8) {
  EXPECT_TRUE(IsValidUtf8("plain, \xC3\xA9, \xE2\x82\xAC, \xF0\x9F\x98\x80"));
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xE2\x82"));          // truncated
}

}  // namespace
}  // namespace gemma
