#include "router/openai/openai_request.h"

#include "gtest/gtest.h"

namespace gemma::openai {
namespace {

using nlohmann::json;

ParsedRequest Ok(const ParseResult& r) {
  if (auto* e = std::get_if<ApiError>(&r)) {
    ADD_FAILURE() << e->ToJson();
    return {};
  }
  return std::get<ParsedRequest>(r);
}

ApiError Err(const ParseResult& r) {
  if (auto* e = std::get_if<ApiError>(&r)) return *e;
  ADD_FAILURE() << "expected an error";
  return {};
}

TEST(OpenAiRequestTest, CompletionFieldsMapToGenerationParameters) {
  const auto p = Ok(ParseCompletionRequest(json::parse(R"({
    "model": "m", "prompt": "Hello", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "n": 2,
    "stop": ["\n", "END"], "seed": 42, "presence_penalty": 0.5, "frequency_penalty": -0.5, "logprobs": 3,
    "echo": false, "stream": true, "stream_options": {"include_usage": true}, "user": "u"})"), {}));
  EXPECT_EQ(p.model, "m");
  ASSERT_EQ(p.prompts.size(), 1u);
  const auto& g = p.prompts[0];
  EXPECT_EQ(g.input().text(), "Hello");
  EXPECT_EQ(g.parameters().max_new_tokens(), 7);
  EXPECT_FLOAT_EQ(g.parameters().temperature(), 0.5f);
  EXPECT_FLOAT_EQ(g.parameters().top_p(), 0.9f);
  EXPECT_EQ(g.parameters().stop_sequences_size(), 2);
  EXPECT_EQ(g.parameters().seed(), 42u);
  EXPECT_FLOAT_EQ(g.parameters().presence_penalty(), 0.5f);
  EXPECT_FLOAT_EQ(g.parameters().frequency_penalty(), -0.5f);
  EXPECT_TRUE(g.parameters().logprobs());
  EXPECT_EQ(g.parameters().top_logprobs(), 3);
  EXPECT_EQ(p.n, 2);
  EXPECT_TRUE(p.stream);
  EXPECT_TRUE(p.include_usage);
}

TEST(OpenAiRequestTest, OpenAiDefaults) {
  const auto p = Ok(ParseCompletionRequest(json::parse(R"({"model": "m", "prompt": "x"})"), {}));
  EXPECT_EQ(p.prompts[0].parameters().max_new_tokens(), 16);
  EXPECT_FLOAT_EQ(p.prompts[0].parameters().temperature(), 1.0f);
  EXPECT_FALSE(p.prompts[0].parameters().has_seed());
  const auto c = Ok(ParseChatRequest(json::parse(R"({"model": "m", "messages": [{"role": "user", "content": "x"}]})"), {}));
  EXPECT_EQ(c.prompts[0].parameters().max_new_tokens(), 0) << "chat: the router's default";
  EXPECT_TRUE(c.generates());
  EXPECT_TRUE(p.generates());
  const auto echo_only =
      Ok(ParseCompletionRequest(json::parse(R"({"model": "m", "prompt": "x", "echo": true, "max_tokens": 0})"), {}));
  EXPECT_FALSE(echo_only.generates());
}

TEST(OpenAiRequestTest, PromptShapes) {
  const auto list = Ok(ParseCompletionRequest(json::parse(R"({"model": "m", "prompt": ["a", "b"], "n": 3})"), {}));
  EXPECT_EQ(list.prompts.size(), 2u);
  EXPECT_EQ(list.choices(), 6);
  EXPECT_EQ(list.prompts[4 / list.n].input().text(), "b") << "choice 4 is prompt 1's";
  const auto ids = Ok(ParseCompletionRequest(json::parse(R"({"model": "m", "prompt": [2, 10, 11]})"), {}));
  ASSERT_EQ(ids.prompts.size(), 1u);
  EXPECT_EQ(ids.prompts[0].input().token_ids().ids_size(), 3);
  const auto id_lists = Ok(ParseCompletionRequest(json::parse(R"({"model": "m", "prompt": [[2, 10], [2, 11]]})"), {}));
  EXPECT_EQ(id_lists.prompts.size(), 2u);
  EXPECT_EQ(Err(ParseCompletionRequest(json::parse(R"({"model": "m", "prompt": 5})"), {})).param, "prompt");
  EXPECT_EQ(Err(ParseCompletionRequest(json::parse(R"({"model": "m", "prompt": []})"), {})).param, "prompt");
  EXPECT_EQ(Err(ParseCompletionRequest(json::parse(R"({"model": "m", "prompt": [1, "a"]})"), {})).param, "prompt");
  EXPECT_EQ(Err(ParseCompletionRequest(json::parse(R"({"model": "m"})"), {})).param, "prompt");
}

TEST(OpenAiRequestTest, WholeNumbersWrittenAsFloatsAreTakenAsIntegers) {
  const ParsedRequest p =
      Ok(ParseCompletionRequest(json::parse(R"({"model": "m", "prompt": "x", "n": 2.0, "max_tokens": 5.0})"), {}));
  EXPECT_EQ(p.n, 2);
  EXPECT_EQ(p.prompts.at(0).parameters().max_new_tokens(), 5);
}

TEST(OpenAiRequestTest, BadFieldsAreNamedWithTheirRange) {
  struct Case {
    const char* body;
    const char* param;
    const char* says;
  };
  const Case cases[] = {
      {R"({"model": "m", "prompt": "x", "temperature": 3})", "temperature", "[0, 2]"},
      {R"({"model": "m", "prompt": "x", "temperature": "hot"})", "temperature", "number"},
      {R"({"model": "m", "prompt": "x", "top_p": 0})", "top_p", "(0, 1]"},
      {R"({"model": "m", "prompt": "x", "n": 0})", "n", "1..128"},
      {R"({"model": "m", "prompt": "x", "n": 1.5})", "n", "integer"},
      {R"({"model": "m", "prompt": "x", "max_tokens": -1})", "max_tokens", "0.."},
      // Past INT64_MAX: refused as sent, never clamped (two seeds that big would otherwise be one).
      {R"({"model": "m", "prompt": "x", "seed": 9223372036854775808})", "seed", "is 9223372036854775808; allowed"},
      {R"({"model": "m", "prompt": "x", "max_tokens": 18446744073709551615})", "max_tokens", "is 18446744073709551615"},
      {R"({"model": "m", "prompt": "x", "presence_penalty": 2.5})", "presence_penalty", "[-2, 2]"},
      {R"({"model": "m", "prompt": "x", "logprobs": 21})", "logprobs", "0..20"},
      {R"({"model": "m", "prompt": "x", "stop": 5})", "stop", "string"},
      {R"({"model": "m", "prompt": "x", "stop": ["a","b","c","d","e","f","g","h","i"]})", "stop", "at most 8"},
      {R"({"model": "m", "prompt": "x", "stream": "yes"})", "stream", "true or false"},
      {R"({"model": "m", "prompt": "x", "stream_options": {"include_usage": true}})", "stream_options", "stream"},
      {R"({"model": "m", "prompt": "x", "logit_bias": {"1": 5}})", "logit_bias", "not supported"},
      {R"({"model": "m", "prompt": "x", "suffix": "s"})", "suffix", "not supported"},
      {R"({"model": "m", "prompt": "x", "frobnicate": 1})", "frobnicate", "unrecognized"},
      {R"({"model": "m", "prompt": "x", "echo": true, "logprobs": 1, "stream": true})", "echo", "not supported"},
      {R"({"model": "m", "prompt": "x", "max_tokens": 0})", "max_tokens", "echo"},
      {R"({"prompt": "x"})", "model", "required"},
      {R"({"model": 5, "prompt": "x"})", "model", "'model' must be a string"},
      {R"({"model": "m", "prompt": "x", "user": 7})", "user", "'user' must be a string"},
      // A token id out of range names its place: which list, which position.
      {R"({"model": "m", "prompt": [2, -1]})", "prompt", "'prompt[1]' is -1, outside the vocabulary; allowed"},
      {R"({"model": "m", "prompt": [[2], [2, 4294967298]]})", "prompt", "'prompt[1][1]' is 4294967298"},
      // A whole number written as a float past every integer type: out of range, not "not an integer".
      {R"({"model": "m", "prompt": "x", "max_tokens": 1e30})", "max_tokens", "is 1e+30; allowed: 0.."},
      // 2^63 written as a float: one past INT64_MAX, refused (its conversion would be undefined).
      {R"({"model": "m", "prompt": "x", "seed": 9223372036854775807.0})", "seed", "allowed"},
      {R"({"model": "m", "prompt": "x", "response_format": {"type": "xml"}})", "response_format.type", "json_schema"},
      {R"({"model": "m", "prompt": "x", "response_format": {"type": "json_schema"}})",
       "response_format.json_schema.schema", "JSON Schema"},
  };
  for (const Case& c : cases) {
    const ApiError e = Err(ParseCompletionRequest(json::parse(c.body), {}));
    EXPECT_EQ(e.http_status, 400) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body;
    EXPECT_NE(e.message.find(c.says), std::string::npos) << c.body << " -> " << e.message;
    EXPECT_NE(e.ToJson().find("\"invalid_request_error\""), std::string::npos);
  }
}

// What SDKs and agent frameworks send by default asks for nothing: accepted. A value that asks for something is
// refused, naming the values that would be taken.
TEST(OpenAiRequestTest, FieldsThatAskForNothingAreTaken) {
  Ok(ParseChatRequest(json::parse(R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [],
      "tool_choice": "none", "parallel_tool_calls": false, "store": false, "service_tier": "auto",
      "metadata": {"run": "7"}})"), {}));
  for (const char* field : {R"("tools": [{"type": "function"}])", R"("tool_choice": "auto")", R"("store": true)",
                            R"("service_tier": "flex")", R"("metadata": {"n": 7})"}) {
    const ApiError e = Err(ParseChatRequest(
        json::parse(absl::StrCat(R"({"model": "m", "messages": [{"role": "user", "content": "x"}], )", field, "}")),
        {}));
    EXPECT_NE(e.message.find("is not supported by this server; allowed: "), std::string::npos) << e.message;
  }
  EXPECT_EQ(Err(ParseChatRequest(json::parse(R"({"model": "m", "messages": [{"role": "user", "content": "x"}],
      "logit_bias": {"5": 1}})"), {})).message, "'logit_bias' is not supported by this server");
}

TEST(OpenAiRequestTest, VllmsLengthExtensions) {
  const auto p = Ok(ParseCompletionRequest(
      json::parse(R"({"model": "m", "prompt": "x", "max_tokens": 9, "ignore_eos": true, "min_tokens": 4})"), {}));
  EXPECT_TRUE(p.prompts[0].parameters().ignore_eos());
  EXPECT_EQ(p.prompts[0].parameters().min_new_tokens(), 4);
  EXPECT_EQ(Err(ParseChatRequest(json::parse(R"({"model": "m", "messages": [{"role": "user", "content": "x"}],
      "min_tokens": -1})"), {})).param, "min_tokens");
  // Refused by their HTTP names where they cannot apply: beside beams, a structured output, or nothing generated.
  for (const auto& [body, param] : std::vector<std::pair<std::string, std::string>>{
           {R"("use_beam_search": true, "ignore_eos": true)", "ignore_eos"},
           {R"("use_beam_search": true, "min_tokens": 2)", "min_tokens"},
           {R"("response_format": {"type": "json_object"}, "ignore_eos": true)", "ignore_eos"},
           {R"("echo": true, "max_tokens": 0, "min_tokens": 2)", "min_tokens"}}) {
    const ApiError e =
        Err(ParseCompletionRequest(json::parse(absl::StrCat(R"({"model": "m", "prompt": "x", )", body, "}")), {}));
    EXPECT_EQ(e.param, param) << body << ": " << e.message;
  }
}

TEST(OpenAiRequestTest, ChatMessagesRolesAndParts) {
  RequestContext gemma3;
  gemma3.chat_system_role = true;
  const auto p = Ok(ParseChatRequest(json::parse(R"({"model": "m", "messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
      {"role": "assistant", "content": "Hello"},
      {"role": "user", "content": "Again"}],
      "max_completion_tokens": 5, "logprobs": true, "top_logprobs": 2})"), gemma3));
  const auto& chat = p.prompts[0].input().chat();
  ASSERT_EQ(chat.messages_size(), 4);
  EXPECT_EQ(chat.messages(0).role(), "system");
  EXPECT_EQ(chat.messages(1).content(), "Hi there");
  EXPECT_EQ(chat.messages(2).role(), "model");
  EXPECT_EQ(p.prompts[0].parameters().max_new_tokens(), 5);
  EXPECT_EQ(p.top_logprobs, 2);

  const ApiError no_system = Err(ParseChatRequest(
      json::parse(R"({"model": "m", "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]})"), {}));
  EXPECT_EQ(no_system.param, "messages[0].role");
  EXPECT_NE(no_system.message.find("no system role"), std::string::npos) << no_system.message;
  const ApiError tool =
      Err(ParseChatRequest(json::parse(R"({"model": "m", "messages": [{"role": "tool", "content": "x"}]})"), {}));
  EXPECT_EQ(tool.param, "messages[0].role");
  EXPECT_EQ(tool.message.find("system"), std::string::npos) << tool.message;
  // The template's turn order, said for the message that breaks it, with the role as the request spelled it.
  const ApiError twice = Err(ParseChatRequest(
      json::parse(R"({"model": "m", "messages": [{"role": "user", "content": "x"},
                                                  {"role": "user", "content": "y"}]})"),
      {}));
  EXPECT_EQ(twice.param, "messages[1].role");
  EXPECT_NE(twice.message.find("an assistant (model) turn was due"), std::string::npos) << twice.message;
  const ApiError developer = Err(ParseChatRequest(
      json::parse(R"({"model": "m", "messages": [{"role": "developer", "content": "x"},
                                                  {"role": "user", "content": "y"}]})"),
      {}));
  EXPECT_NE(developer.message.find("'messages[0].role' is \"developer\""), std::string::npos) << developer.message;
  const ApiError alone = Err(
      ParseChatRequest(json::parse(R"({"model": "m", "messages": [{"role": "system", "content": "x"}]})"), gemma3));
  EXPECT_EQ(alone.param, "messages[0].role");
  EXPECT_NE(alone.message.find("needs a user message after it"), std::string::npos) << alone.message;
  const ApiError then_assistant = Err(ParseChatRequest(
      json::parse(R"({"model": "m", "messages": [{"role": "system", "content": "x"},
                                                  {"role": "assistant", "content": "y"}]})"),
      gemma3));
  EXPECT_EQ(then_assistant.param, "messages[1].role");
  EXPECT_EQ(Err(ParseChatRequest(json::parse(
                R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]})"), {}))
                .param,
            "messages[0].content[0].type");
  EXPECT_EQ(Err(ParseChatRequest(json::parse(R"({"model": "m", "messages": []})"), {})).param, "messages");
  EXPECT_EQ(Err(ParseChatRequest(json::parse(R"({"model": "m", "messages": [{"role": "user"}]})"), {})).param,
            "messages[0].content");
  EXPECT_EQ(Err(ParseChatRequest(json::parse(
                R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]})"), {}))
                .param,
            "tools");
  EXPECT_EQ(Err(ParseChatRequest(json::parse(
                R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})"), {}))
                .param,
            "top_logprobs");
}

TEST(OpenAiRequestTest, ResponseFormats) {
  const auto schema = Ok(ParseChatRequest(json::parse(R"({"model": "m", "messages": [{"role": "user", "content": "x"}],
      "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}}})"), {}));
  EXPECT_EQ(schema.prompts[0].parameters().response_format().type(), "json_schema");
  EXPECT_EQ(json::parse(schema.prompts[0].parameters().response_format().json_schema()), json::parse(R"({"type":"object"})"));
  const auto object = Ok(ParseChatRequest(json::parse(R"({"model": "m", "messages": [{"role": "user", "content": "x"}],
      "response_format": {"type": "json_object"}})"), {}));
  EXPECT_EQ(object.prompts[0].parameters().response_format().type(), "json_object");
  const auto text = Ok(ParseChatRequest(json::parse(R"({"model": "m", "messages": [{"role": "user", "content": "x"}],
      "response_format": {"type": "text"}})"), {}));
  EXPECT_FALSE(text.prompts[0].parameters().has_response_format());
}

TEST(OpenAiRequestTest, NullsAreUnsetOptions) {
  const auto p = Ok(ParseCompletionRequest(
      json::parse(R"({"model": "m", "prompt": "x", "temperature": null, "logit_bias": null, "seed": null})"), {}));
  EXPECT_FLOAT_EQ(p.prompts[0].parameters().temperature(), 1.0f);
  EXPECT_FALSE(p.prompts[0].parameters().has_seed());
}

TEST(OpenAiRequestTest, BestOfDefaultsToNAndMakesTheCandidatesCarryLogprobs) {
  const auto plain = Ok(ParseCompletionRequest(json::parse(R"({"model": "m", "prompt": "x", "n": 3})"), {}));
  EXPECT_EQ(plain.best_of, 3);
  EXPECT_FALSE(plain.prompts[0].parameters().logprobs());
  const auto best = Ok(ParseCompletionRequest(json::parse(R"({"model": "m", "prompt": ["x", "y"], "n": 2,
      "best_of": 5})"), {}));
  EXPECT_EQ(best.best_of, 5);
  EXPECT_EQ(best.choices(), 4);
  EXPECT_EQ(best.candidates(), 10);
  EXPECT_TRUE(best.prompts[1].parameters().logprobs()) << "ranked by the sum of the tokens' log-probs";
  EXPECT_FALSE(best.logprobs) << "but the client did not ask to see them";
  EXPECT_EQ(Err(ParseCompletionRequest(json::parse(R"({"model": "m", "prompt": "x", "n": 4, "best_of": 3})"), {}))
                .param,
            "best_of");
}

TEST(OpenAiRequestTest, BeamSearchTakesBestOfAsTheWidthAndClearsOpenAisSamplingDefaults) {
  const auto p = Ok(ParseCompletionRequest(json::parse(R"({"model": "m", "prompt": "x", "n": 2, "best_of": 5,
      "use_beam_search": true, "length_penalty": 0.5, "early_stopping": true, "stream": true})"), {}));
  EXPECT_EQ(p.beams, 5);
  const auto& g = p.prompts[0].parameters();
  EXPECT_EQ(g.num_beams(), 5);
  EXPECT_EQ(g.n(), 0) << "one search per prompt";
  EXPECT_FLOAT_EQ(g.temperature(), 0.0f) << "OpenAI's default of 1 does not apply to beams";
  EXPECT_FLOAT_EQ(g.length_penalty(), 0.5f);
  EXPECT_TRUE(g.early_stopping());
  EXPECT_FALSE(g.logprobs()) << "beams carry their scores; the client did not ask for log-probs";
  const auto chat = Ok(ParseChatRequest(json::parse(R"({"model": "m", "messages": [{"role": "user", "content": "x"}],
      "n": 3, "use_beam_search": true})"), {}));
  EXPECT_EQ(chat.beams, 3);
  EXPECT_EQ(Err(ParseChatRequest(json::parse(R"({"model": "m", "messages": [{"role": "user", "content": "x"}],
      "use_beam_search": true, "top_p": 0.5})"), {})).param, "top_p");
}

}  // namespace
}  // namespace gemma::openai
