// The OpenAI-compatible HTTP API against a real router and worker: the same tokens as gRPC, streaming, choices,
// errors in OpenAI's shape with OpenAI's status codes, cancellation on disconnect, metrics.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "gtest/gtest.h"
#include "router/http/test_client.h"
#include "router/openai_test_support.h"
#include "router/router_test_support.h"
#include "structured/test_schemas.h"
#include "tokenizer/utf8.h"

namespace gemma {
namespace {

using http::testing::Call;
using http::testing::EventData;
using http::testing::HttpReply;
using nlohmann::json;

class OpenAiHttpTest : public OpenAiRouterTest {
 protected:
  static void SetUpTestSuite() {
    StartServers(GemmaTinyDir() + "/tiny-mqa", {}, {"--max_tokens_per_step=128"}, /*with_metrics=*/true);
  }
  static json Body(const HttpReply& r) { return json::parse(r.body, nullptr, false); }
};

v1::GenerateResponse Grpc(RouterProcess& router, const v1::GenerateRequest& request) {
  v1::GenerateResponse response;
  grpc::ClientContext ctx;
  const grpc::Status s = router.stub->Generate(&ctx, request, &response);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return response;
}

TEST_F(OpenAiHttpTest, CompletionEqualsTheGrpcApiForTheSameRequestAndSeed) {
  const HttpReply r = Post("/v1/completions", {{"model", "tiny"}, {"prompt", "The capital of France"},
                                               {"max_tokens", 12}, {"temperature", 0.8}, {"seed", 7}, {"logprobs", 2}});
  ASSERT_EQ(r.status, 200) << r.body;
  const json body = Body(r);
  v1::GenerateRequest g;
  g.mutable_input()->set_text("The capital of France");
  g.mutable_parameters()->set_max_new_tokens(12);
  g.mutable_parameters()->set_temperature(0.8f);
  g.mutable_parameters()->set_seed(7);
  g.mutable_parameters()->set_logprobs(true);
  g.mutable_parameters()->set_top_logprobs(2);
  const v1::GenerateResponse expected = Grpc(*router_, g);
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["model"], "tiny");
  ASSERT_EQ(body["choices"].size(), 1u);
  EXPECT_EQ(body["choices"][0]["text"], expected.text());
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  const json& lp = body["choices"][0]["logprobs"];
  ASSERT_EQ(lp["token_logprobs"].size(), static_cast<size_t>(expected.tokens_size()));
  for (int i = 0; i < expected.tokens_size(); ++i) {
    EXPECT_NEAR(lp["token_logprobs"][i].get<double>(), expected.tokens(i).logprob(), 1e-6);
    // The two alternatives and, where it is not one of them, the sampled token itself (OpenAI's logprobs + 1).
    const json& top = lp["top_logprobs"][i];
    EXPECT_GE(top.size(), 2u);
    EXPECT_LE(top.size(), 3u);
    ASSERT_TRUE(top.contains(lp["tokens"][i].get<std::string>())) << top;
    EXPECT_NEAR(top[lp["tokens"][i].get<std::string>()].get<double>(), expected.tokens(i).logprob(), 1e-6);
  }
  EXPECT_EQ(body["usage"]["completion_tokens"], 12);
  EXPECT_EQ(body["usage"]["prompt_tokens"], expected.usage().prompt_tokens());
  EXPECT_EQ(body["usage"]["total_tokens"], 12 + expected.usage().prompt_tokens());
}

TEST_F(OpenAiHttpTest, ChatStreamSendsAChunkPerTokenAndEqualsTheUnaryAnswer) {
  const json request = {{"model", "tiny"},
                        {"messages", {{{"role", "user"}, {"content", "Hello there"}}}},
                        {"max_tokens", 10},
                        {"temperature", 0},
                        {"logprobs", true}};
  const HttpReply unary = Post("/v1/chat/completions", request);
  ASSERT_EQ(unary.status, 200) << unary.body;
  const json whole = Body(unary);
  EXPECT_EQ(whole["object"], "chat.completion");
  EXPECT_EQ(whole["choices"][0]["message"]["role"], "assistant");
  const int tokens = whole["usage"]["completion_tokens"];
  json streamed = request;
  streamed["stream"] = true;
  streamed["stream_options"] = {{"include_usage", true}};
  const HttpReply stream = Post("/v1/chat/completions", streamed);
  ASSERT_EQ(stream.status, 200) << stream.body;
  EXPECT_NE(stream.head.find("Content-Type: text/event-stream"), std::string::npos);
  const std::vector<std::string> events = EventData(stream.body);
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  int token_chunks = 0;
  std::string finish;
  json usage;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json e = json::parse(events[i]);
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    EXPECT_EQ(e["id"], json::parse(events[0])["id"]) << "one id for the whole stream";
    if (e["choices"].empty()) {
      usage = e["usage"];
      continue;
    }
    const json& c = e["choices"][0];
    if (i == 0) {
      EXPECT_EQ(c["delta"]["role"], "assistant");
      continue;
    }
    if (!c["finish_reason"].is_null()) {
      finish = c["finish_reason"];
      continue;
    }
    text += c["delta"]["content"].get<std::string>();
    ASSERT_EQ(c["logprobs"]["content"].size(), 1u) << "one token per chunk";
    ++token_chunks;
  }
  EXPECT_EQ(token_chunks, tokens);
  EXPECT_EQ(text, whole["choices"][0]["message"]["content"]);
  EXPECT_EQ(finish, whole["choices"][0]["finish_reason"]);
  EXPECT_EQ(usage, whole["usage"]);
}

TEST_F(OpenAiHttpTest, ChoicesOfOnePromptUseConsecutiveSeeds) {
  const HttpReply r = Post("/v1/completions", {{"model", "tiny"}, {"prompt", {"one", "two"}}, {"max_tokens", 6},
                                               {"temperature", 1.0}, {"seed", 100}, {"n", 2}});
  ASSERT_EQ(r.status, 200) << r.body;
  const json body = Body(r);
  ASSERT_EQ(body["choices"].size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(body["choices"][i]["index"], i);
    v1::GenerateRequest g;
    g.mutable_input()->set_text(i < 2 ? "one" : "two");
    g.mutable_parameters()->set_max_new_tokens(6);
    g.mutable_parameters()->set_temperature(1.0f);
    g.mutable_parameters()->set_seed(100 + i % 2);
    EXPECT_EQ(body["choices"][i]["text"], Grpc(*router_, g).text()) << "choice " << i;
  }
}

TEST_F(OpenAiHttpTest, StopSequencesAndEcho) {
  const HttpReply plain = Post("/v1/completions", {{"model", "tiny"}, {"prompt", "abc"}, {"max_tokens", 16}, {"temperature", 0}});
  ASSERT_EQ(plain.status, 200);
  const std::string full = Body(plain)["choices"][0]["text"];
  ASSERT_GE(full.size(), 4u);
  const std::string stop = full.substr(2, 2);
  const HttpReply stopped = Post("/v1/completions", {{"model", "tiny"}, {"prompt", "abc"}, {"max_tokens", 16},
                                                     {"temperature", 0}, {"stop", stop}, {"echo", true}});
  ASSERT_EQ(stopped.status, 200) << stopped.body;
  const json body = Body(stopped);
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(body["choices"][0]["text"], "abc" + full.substr(0, full.find(stop)));
}

// text_offset counts characters, as OpenAI's and vLLM's Python strings do, and a stream gives the offsets the whole
// answer does, whatever a stop string or a character split across byte tokens held back. A stream without logprobs
// sends no chunk with empty text.
TEST_F(OpenAiHttpTest, TextOffsetsCountCharactersAndStreamsAgree) {
  const HttpReply echoed = Post("/v1/completions", {{"model", "tiny"}, {"prompt", "\xC3\xA9\xE4\xB8\xAD ok"},
                                                    {"max_tokens", 0}, {"echo", true}, {"logprobs", 0}});
  ASSERT_EQ(echoed.status, 200) << echoed.body;
  const json lp = Body(echoed)["choices"][0]["logprobs"];
  ASSERT_TRUE(lp.is_object()) << echoed.body;
  std::string before;
  bool bytes_differ = false;
  for (size_t i = 0; i < lp["tokens"].size(); ++i) {
    EXPECT_EQ(lp["text_offset"][i].get<int64_t>(), Utf8Characters(before)) << echoed.body;
    bytes_differ |= lp["text_offset"][i].get<size_t>() != before.size();
    before += lp["tokens"][i].get<std::string>();
  }
  EXPECT_EQ(before, "\xC3\xA9\xE4\xB8\xAD ok");
  EXPECT_TRUE(bytes_differ) << "the prompt's two- and three-byte characters must move the offsets off byte counts";

  // A stop string that starts matching the greedy text and never completes: the tokens it covers are held back
  // until it fails, then come out with a later token's chunk.
  json request = {{"model", "tiny"}, {"prompt", "The quick brown fox"}, {"max_tokens", 12}, {"temperature", 0}};
  const HttpReply plain = Post("/v1/completions", request);
  ASSERT_EQ(plain.status, 200) << plain.body;
  const std::string greedy = Body(plain)["choices"][0]["text"];
  ASSERT_GT(greedy.size(), 24u) << greedy;
  request["stop"] = {greedy.substr(10, 12) + "\x01"};
  request["logprobs"] = 1;
  const HttpReply whole = Post("/v1/completions", request);
  ASSERT_EQ(whole.status, 200) << whole.body;
  json streamed = request;
  streamed["stream"] = true;
  const HttpReply stream = Post("/v1/completions", streamed);
  ASSERT_EQ(stream.status, 200) << stream.body;
  json offsets = json::array();
  int held_back = 0;  // token chunks whose text waited for a later chunk: what this request is chosen for
  for (const std::string& event : EventData(stream.body)) {
    if (event == "[DONE]") continue;
    const json c = json::parse(event)["choices"][0];
    if (c["logprobs"].is_null()) continue;
    held_back += c["finish_reason"].is_null() && c["text"] == "";
    for (const json& o : c["logprobs"]["text_offset"]) offsets.push_back(o);
  }
  EXPECT_GE(held_back, 1) << "no token's text was held back: the case is not covered any more\n" << stream.body;
  EXPECT_EQ(offsets, Body(whole)["choices"][0]["logprobs"]["text_offset"]) << whole.body << "\n" << stream.body;

  streamed.erase("logprobs");
  const HttpReply quiet = Post("/v1/completions", streamed);
  ASSERT_EQ(quiet.status, 200) << quiet.body;
  std::string text;
  for (const std::string& event : EventData(quiet.body)) {
    if (event == "[DONE]") continue;
    const json c = json::parse(event)["choices"][0];
    if (!c["finish_reason"].is_null()) continue;
    EXPECT_NE(c["text"], "") << "an empty chunk: " << quiet.body;
    text += c["text"].get<std::string>();
  }
  EXPECT_EQ(text, Body(whole)["choices"][0]["text"]);
}

// What evaluation harnesses send to score a text: echo, logprobs, max_tokens 0. The prompt's log-probs equal the
// gRPC Score's; with max_tokens > 0 they come before the generated tokens'.
TEST_F(OpenAiHttpTest, EchoWithLogprobsScoresThePrompt) {
  const HttpReply r = Post("/v1/completions", {{"model", "tiny"}, {"prompt", "The quick brown fox"}, {"max_tokens", 0},
                                               {"echo", true}, {"logprobs", 1}});
  ASSERT_EQ(r.status, 200) << r.body;
  const json body = Body(r);
  v1::ScoreRequest score;
  score.mutable_input()->set_text("The quick brown fox");
  score.set_top_logprobs(1);
  v1::ScoreResponse expected;
  grpc::ClientContext ctx;
  ASSERT_TRUE(router_->stub->Score(&ctx, score, &expected).ok());
  const json& choice = body["choices"][0];
  EXPECT_EQ(choice["text"], "The quick brown fox");
  EXPECT_EQ(choice["finish_reason"], "length");
  const json& lp = choice["logprobs"];
  // Every prompt token, <bos> first with no log-prob (null), as OpenAI and vLLM list them.
  ASSERT_EQ(lp["token_logprobs"].size(), static_cast<size_t>(expected.token_ids_size()));
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  std::string joined = lp["tokens"][0];
  for (int i = 0; i < expected.logprobs_size(); ++i) {
    EXPECT_NEAR(lp["token_logprobs"][i + 1].get<double>(), expected.logprobs(i), 1e-6) << i;
    EXPECT_EQ(lp["text_offset"][i + 1].get<size_t>(), joined.size());
    joined += lp["tokens"][i + 1].get<std::string>();
    const json& top = lp["top_logprobs"][i + 1];
    EXPECT_GE(top.size(), 1u);  // the best alternative, and the prompt's own token when it is not that one
    EXPECT_LE(top.size(), 2u);
    EXPECT_TRUE(top.contains(lp["tokens"][i + 1].get<std::string>())) << top;
  }
  EXPECT_EQ(joined, "The quick brown fox");
  EXPECT_EQ(body["usage"]["prompt_tokens"], expected.token_ids_size());
  EXPECT_EQ(body["usage"]["completion_tokens"], 0);

  const HttpReply more = Post("/v1/completions", {{"model", "tiny"}, {"prompt", "The quick brown fox"}, {"max_tokens", 3},
                                                  {"echo", true}, {"logprobs", 0}, {"temperature", 0}});
  ASSERT_EQ(more.status, 200) << more.body;
  const json more_body = Body(more);
  const json& m = more_body["choices"][0]["logprobs"];
  ASSERT_EQ(m["token_logprobs"].size(), static_cast<size_t>(expected.token_ids_size() + 3));
  EXPECT_NEAR(m["token_logprobs"][1].get<double>(), expected.logprobs(0), 1e-6);
  // logprobs 0: each token's own entry only, as OpenAI's legacy API gives it (not null).
  for (size_t i = 1; i < m["top_logprobs"].size(); ++i) {
    ASSERT_EQ(m["top_logprobs"][i].size(), 1u) << i << ": " << m["top_logprobs"][i];
    EXPECT_EQ(m["top_logprobs"][i].begin().value(), m["token_logprobs"][i]) << i;
  }
  EXPECT_EQ(Post("/v1/completions", {{"model", "tiny"}, {"prompt", "x"}, {"max_tokens", 0}}).status, 400)
      << "max_tokens 0 without echo";
  // One token: nothing to score, its log-prob null; echo alone counts the prompt.
  const HttpReply one = Post("/v1/completions", {{"model", "tiny"}, {"prompt", {7}}, {"max_tokens", 0}, {"echo", true},
                                                 {"logprobs", 2}});
  ASSERT_EQ(one.status, 200) << one.body;
  const json one_body = Body(one);
  ASSERT_EQ(one_body["choices"][0]["logprobs"]["token_logprobs"].size(), 1u) << one.body;
  EXPECT_TRUE(one_body["choices"][0]["logprobs"]["token_logprobs"][0].is_null());
  EXPECT_EQ(one_body["usage"]["prompt_tokens"], 1);
  const HttpReply plain = Post("/v1/completions", {{"model", "tiny"}, {"prompt", {{2, 7, 9}, {2, 8}}}, {"max_tokens", 0},
                                                   {"echo", true}});
  ASSERT_EQ(plain.status, 200) << plain.body;
  EXPECT_EQ(Body(plain)["usage"]["prompt_tokens"], 5);
  EXPECT_TRUE(Body(plain)["choices"][0]["logprobs"].is_null());
}

TEST_F(OpenAiHttpTest, ErrorsHaveOpenAisShapeAndStatus) {
  const HttpReply bad = Post("/v1/completions", {{"model", "tiny"}, {"prompt", "x"}, {"temperature", 5}});
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(Body(bad)["error"]["param"], "temperature");
  EXPECT_EQ(Body(bad)["error"]["type"], "invalid_request_error");
  const HttpReply tools = Post("/v1/chat/completions", {{"model", "tiny"},
                                                        {"messages", {{{"role", "user"}, {"content", "x"}}}},
                                                        {"tools", json::array({{{"type", "function"}}})}});
  EXPECT_EQ(tools.status, 400);
  EXPECT_EQ(Body(tools)["error"]["param"], "tools");
  const HttpReply model = Post("/v1/completions", {{"model", "gpt-4"}, {"prompt", "x"}});
  EXPECT_EQ(model.status, 404);
  EXPECT_EQ(Body(model)["error"]["code"], "model_not_found");
  const HttpReply long_request = Post("/v1/completions", {{"model", "tiny"}, {"prompt", "x"}, {"max_tokens", 4000}});
  EXPECT_EQ(long_request.status, 400);
  EXPECT_EQ(Body(long_request)["error"]["param"], "max_tokens") << long_request.body;
  // Chat's newer name for the same bound is the one its error speaks of.
  const HttpReply long_chat = Post("/v1/chat/completions", {{"model", "tiny"},
                                                            {"messages", {{{"role", "user"}, {"content", "x"}}}},
                                                            {"max_completion_tokens", 4000}});
  EXPECT_EQ(long_chat.status, 400);
  EXPECT_EQ(Body(long_chat)["error"]["param"], "max_completion_tokens") << long_chat.body;
  EXPECT_NE(Body(long_chat)["error"]["message"].get<std::string>().find("max_completion_tokens (4000)"),
            std::string::npos)
      << long_chat.body;
  const HttpReply long_stop =
      Post("/v1/completions", {{"model", "tiny"}, {"prompt", "x"}, {"stop", {"ok", std::string(300, 'a')}}});
  EXPECT_EQ(long_stop.status, 400);
  EXPECT_EQ(Body(long_stop)["error"]["param"], "stop") << long_stop.body;
  EXPECT_TRUE(Body(long_stop)["error"]["message"].get<std::string>().starts_with("stop[1] is 300 bytes"))
      << long_stop.body;
  const HttpReply not_json = Call(http_port_, "POST", "/v1/completions", "{not json");
  EXPECT_EQ(not_json.status, 400);
  EXPECT_TRUE(Body(not_json).contains("error"));
  EXPECT_EQ(Call(http_port_, "GET", "/v1/nothing").status, 404);
  EXPECT_EQ(Call(http_port_, "GET", "/v1/completions").status, 405);
  // The prompt's faults lie on "prompt", in the HTTP API's names (not the gRPC API's input.text).
  // An empty prompt is <bos> alone, as OpenAI and vLLM take it: generation from the start of a document.
  const HttpReply empty = Post("/v1/completions", {{"model", "tiny"}, {"prompt", ""}, {"max_tokens", 2}});
  EXPECT_EQ(empty.status, 200) << empty.body;
  EXPECT_EQ(Body(empty)["usage"]["prompt_tokens"], 1) << empty.body;
  EXPECT_EQ(Body(empty)["usage"]["completion_tokens"], 2) << empty.body;
  const HttpReply too_long = Post("/v1/completions", {{"model", "tiny"}, {"prompt", std::vector<int>(600, 5)}});
  EXPECT_EQ(too_long.status, 400);
  EXPECT_EQ(Body(too_long)["error"]["param"], "prompt") << too_long.body;
  const HttpReply deleted = Call(http_port_, "DELETE", "/v1/completions");
  EXPECT_EQ(deleted.status, 405);
  EXPECT_NE(Body(deleted)["error"]["message"].get<std::string>().find("DELETE is not allowed"), std::string::npos)
      << deleted.body;
  EXPECT_NE(deleted.head.find("Allow: POST"), std::string::npos) << deleted.head;
  const HttpReply health = Call(http_port_, "DELETE", "/health");
  EXPECT_EQ(health.status, 405) << health.body;
  EXPECT_NE(health.head.find("Allow: GET, HEAD"), std::string::npos) << health.head;
  const HttpReply traced = Call(http_port_, "TRACE", "/v1/models");
  EXPECT_EQ(traced.status, 405) << traced.body;
  EXPECT_NE(traced.head.find("Allow: GET"), std::string::npos) << traced.head;
  // Of several prompts, the one at fault is named.
  const HttpReply second =
      Post("/v1/completions", {{"model", "tiny"}, {"prompt", {std::vector<int>{2, 10}, std::vector<int>(600, 5)}}});
  EXPECT_EQ(second.status, 400);
  EXPECT_EQ(Body(second)["error"]["param"], "prompt") << second.body;
  EXPECT_TRUE(Body(second)["error"]["message"].get<std::string>().starts_with("prompt[1]")) << second.body;
  // A token id past the model's vocabulary, with the model's bound.
  const HttpReply outside = Post("/v1/completions", {{"model", "tiny"}, {"prompt", {{2, 10}, {2, 99999999}}}});
  EXPECT_EQ(outside.status, 400);
  EXPECT_EQ(Body(outside)["error"]["message"], "'prompt[1][1]' is 99999999, outside the vocabulary; allowed: 0..4095")
      << outside.body;
  // Without max_tokens, OpenAI's default of 16 is what the prompt left no room for, and the error says so.
  const HttpReply defaulted = Post("/v1/completions", {{"model", "tiny"}, {"prompt", std::vector<int>(500, 5)}});
  EXPECT_EQ(defaulted.status, 400);
  EXPECT_NE(Body(defaulted)["error"]["message"].get<std::string>().find(
                "max_tokens (16, the default when 'max_tokens' is not given)"),
            std::string::npos)
      << defaulted.body;
}

TEST_F(OpenAiHttpTest, ChatWithoutMaxTokensGeneratesUpToTheDefault) {
  const HttpReply r = Post("/v1/chat/completions", {{"model", "tiny"}, {"messages", {{{"role", "user"}, {"content", "x"}}}},
                                                    {"temperature", 0}, {"stop", "\x01"}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_GT(Body(r)["usage"]["completion_tokens"].get<int>(), 0) << r.body;
  EXPECT_GT(Body(r)["usage"]["prompt_tokens"].get<int>(), 0) << r.body;
}

TEST_F(OpenAiHttpTest, ModelsAndHealth) {
  const HttpReply models = Call(http_port_, "GET", "/v1/models");
  ASSERT_EQ(models.status, 200);
  const json m = Body(models);
  EXPECT_EQ(m["object"], "list");
  EXPECT_EQ(m["data"][0]["id"], "tiny");
  EXPECT_GT(m["data"][0]["max_model_len"].get<int>(), 0);
  const HttpReply one = Call(http_port_, "GET", "/v1/models/tiny");
  ASSERT_EQ(one.status, 200) << one.body;
  json listed = m["data"][0], alone = Body(one);
  listed.erase("created");  // the clock may have ticked between the two calls
  alone.erase("created");
  EXPECT_EQ(alone, listed);
  const HttpReply missing = Call(http_port_, "GET", "/v1/models/gpt-4");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(Body(missing)["error"]["code"], "model_not_found") << missing.body;
  EXPECT_EQ(Call(http_port_, "POST", "/v1/models/tiny").status, 405);
  EXPECT_EQ(Call(http_port_, "GET", "/v1/models/t%69ny").status, 200) << "an id is percent-decoded";
  EXPECT_EQ(Call(http_port_, "GET", "/health").status, 200);
}

// Prompts are tokenized off the HTTP loop: a few megabytes of prompt (seconds of tokenizing, then refused as too
// long) hold up neither /health nor a small request.
TEST_F(OpenAiHttpTest, ALongPromptBeingTokenizedHoldsUpNoOtherExchange) {
  std::string prompt;
  for (int i = 0; i < 1000000; ++i) prompt += "a b ";
  const std::string body = json{{"model", "tiny"}, {"prompt", prompt}, {"max_tokens", 1}}.dump();
  auto big = std::async(std::launch::async, [&] { return Call(http_port_, "POST", "/v1/completions", body); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the body is in, its prompt being tokenized
  EXPECT_EQ(Call(http_port_, "GET", "/health").status, 200);
  const HttpReply small = Post("/v1/completions", {{"model", "tiny"}, {"prompt", "Hi"}, {"max_tokens", 1}});
  EXPECT_EQ(small.status, 200) << small.body;
  EXPECT_EQ(big.wait_for(std::chrono::seconds(0)), std::future_status::timeout)
      << "the long prompt was answered first: the others waited for its tokenizing";
  const HttpReply refused = big.get();
  EXPECT_EQ(refused.status, 400) << refused.body;
  EXPECT_NE(refused.body.find("tokens"), std::string::npos) << refused.body;
}

// A chat prompt is as large as its messages: tokenized off the loop too.
TEST_F(OpenAiHttpTest, ALongChatMessageBeingTokenizedHoldsUpNoOtherExchange) {
  std::string content;
  for (int i = 0; i < 1000000; ++i) content += "a b ";
  const std::string body =
      json{{"model", "tiny"}, {"messages", {{{"role", "user"}, {"content", content}}}}, {"max_tokens", 1}}.dump();
  auto big = std::async(std::launch::async, [&] { return Call(http_port_, "POST", "/v1/chat/completions", body); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the body is in, its messages being tokenized
  EXPECT_EQ(Call(http_port_, "GET", "/health").status, 200);
  EXPECT_EQ(big.wait_for(std::chrono::seconds(0)), std::future_status::timeout)
      << "the long chat message was answered first: /health waited for its tokenizing";
  EXPECT_EQ(big.get().status, 400);
}

TEST_F(OpenAiHttpTest, AClientThatDisconnectsCancelsItsRequest) {
  const std::string before = testing::HttpGet(metrics_port_, "/metrics");
  const std::string series = R"(gemma_router_requests_total{code="CANCELLED",endpoint="/v1/completions",outcome="cancelled",protocol="http"})";
  const double cancelled_before = std::max(0.0, Sample(before, series));  // -1: no such series yet
  const int fd = http::testing::ConnectLoopback(http_port_);
  http::testing::SendAll(fd, http::testing::RequestText(
                                 "POST", "/v1/completions",
                                 json{{"model", "tiny"}, {"prompt", "go"}, {"max_tokens", 400}, {"stream", true},
                                      {"temperature", 0}, {"stop", "\x01"}}.dump()));
  // The first bytes arrive, then the client leaves.
  char buf[256];
  ASSERT_GT(::recv(fd, buf, sizeof(buf), 0), 0);
  ::close(fd);
  double cancelled = cancelled_before;
  for (int i = 0; i < 100 && cancelled == cancelled_before; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    cancelled = std::max(0.0, Sample(testing::HttpGet(metrics_port_, "/metrics"), series));  // -1 until it counts
  }
  EXPECT_EQ(cancelled, cancelled_before + 1) << "the request ran on after its client left";
}

// Gone before its prompt was tokenized: never admitted, and counted as cancelled all the same.
TEST_F(OpenAiHttpTest, AClientThatLeavesWhileItsPromptIsTokenizedIsCountedCancelled) {
  const std::string series = R"(gemma_router_requests_total{code="CANCELLED",endpoint="/v1/completions",outcome="cancelled",protocol="http"})";
  const double cancelled_before = std::max(0.0, Sample(testing::HttpGet(metrics_port_, "/metrics"), series));
  std::string prompt;
  for (int i = 0; i < 1000000; ++i) prompt += "a b ";
  const int fd = http::testing::ConnectLoopback(http_port_);
  http::testing::SendAll(fd, http::testing::RequestText("POST", "/v1/completions",
                                                        json{{"model", "tiny"}, {"prompt", prompt}}.dump()));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ::close(fd);
  double cancelled = cancelled_before;
  for (int i = 0; i < 600 && cancelled == cancelled_before; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    cancelled = std::max(0.0, Sample(testing::HttpGet(metrics_port_, "/metrics"), series));
  }
  EXPECT_EQ(cancelled, cancelled_before + 1) << "a request whose client left during tokenizing went uncounted";
}

TEST_F(OpenAiHttpTest, MetricsCountHttpRequestsByEndpointAndOutcome) {
  ASSERT_EQ(Post("/v1/chat/completions", {{"model", "tiny"}, {"messages", {{{"role", "user"}, {"content", "x"}}}},
                                          {"max_tokens", 2}})
                .status,
            200);
  ASSERT_EQ(Post("/v1/chat/completions", {{"model", "tiny"}, {"messages", "x"}}).status, 400);
  const std::string metrics = testing::HttpGet(metrics_port_, "/metrics");
  EXPECT_GE(Sample(metrics, R"(gemma_router_requests_total{code="OK",endpoint="/v1/chat/completions",outcome="completed",protocol="http"})"), 1);
  EXPECT_GE(Sample(metrics, R"(gemma_router_requests_total{code="INVALID_ARGUMENT",endpoint="/v1/chat/completions",outcome="rejected",protocol="http"})"), 1);
}

// 200 outputs of the tiny model (random weights) with seeded sampling, 20 per schema: every one ends, parses and
// validates, through the whole path (router grammar and masks, worker sampling).
TEST_F(OpenAiHttpTest, StructuredOutputsParseAndValidateAgainstTheirSchemas) {
  int outputs = 0;
  for (size_t i = 0; i < std::size(structured::testing::kSchemas); ++i) {
    const json schema = json::parse(structured::testing::kSchemas[i]);
    const HttpReply r = Post("/v1/chat/completions",
                             {{"model", "tiny"},
                              {"messages", {{{"role", "user"}, {"content", "Give me JSON."}}}},
                              {"max_tokens", 480},
                              {"temperature", 1.0},
                              {"seed", 100 * static_cast<int>(i)},
                              {"n", 20},
                              {"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "s"}, {"schema", schema}}}}}});
    ASSERT_EQ(r.status, 200) << "schema " << i + 1 << ": " << r.body;
    const json body = Body(r);
    ASSERT_EQ(body["choices"].size(), 20u);
    for (const json& choice : body["choices"]) {
      const std::string text = choice["message"]["content"];
      EXPECT_EQ(choice["finish_reason"], "stop") << "schema " << i + 1 << ": " << text;
      const json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
      ASSERT_FALSE(value.is_discarded()) << "schema " << i + 1 << ": not JSON: " << text;
      std::string why;
      EXPECT_TRUE(structured::testing::Valid(value, schema, schema, &why)) << "schema " << i + 1 << ": " << text
                                                                             << "\n  " << why;
      ++outputs;
    }
  }
  EXPECT_EQ(outputs, 200);
}

TEST_F(OpenAiHttpTest, JsonObjectModeAndBadSchemas) {
  const HttpReply r = Post("/v1/completions", {{"model", "tiny"}, {"prompt", "x"}, {"max_tokens", 300}, {"seed", 3},
                                               {"response_format", {{"type", "json_object"}}}, {"n", 4}});
  ASSERT_EQ(r.status, 200) << r.body;
  for (const json& choice : Body(r)["choices"]) {
    const std::string text = choice["text"];
    ASSERT_FALSE(text.empty());
    EXPECT_EQ(text[0], '{') << text;
    // Cut by max_tokens or not, what was generated is a valid prefix; when it ended by itself it is an object.
    if (choice["finish_reason"] == "stop") EXPECT_TRUE(json::parse(text, nullptr, false).is_object()) << text;
  }
  const HttpReply pattern = Post("/v1/completions", {{"model", "tiny"}, {"prompt", "x"},
                                                     {"response_format", {{"type", "json_schema"}, {"json_schema", {{"schema",
                                                      {{"type", "string"}, {"pattern", "^a+$"}}}}}}}});
  EXPECT_EQ(pattern.status, 400);
  EXPECT_NE(Body(pattern)["error"]["message"].get<std::string>().find("pattern"), std::string::npos) << pattern.body;
}

// The gRPC API takes the same response_format, and its seeded tokens equal the HTTP API's.
TEST_F(OpenAiHttpTest, GrpcResponseFormatEqualsHttp) {
  const char* schema = R"({"type":"object","properties":{"a":{"type":"integer"},"b":{"enum":["x","y"]}},"required":["a","b"]})";
  v1::GenerateRequest g;
  g.mutable_input()->set_text("Q");
  g.mutable_parameters()->set_max_new_tokens(200);
  g.mutable_parameters()->set_temperature(1.0f);
  g.mutable_parameters()->set_seed(9);
  g.mutable_parameters()->mutable_response_format()->set_type("json_schema");
  g.mutable_parameters()->mutable_response_format()->set_json_schema(schema);
  const v1::GenerateResponse grpc = Grpc(*router_, g);
  EXPECT_EQ(grpc.finish_reason(), v1::FINISH_REASON_EOS);
  const json value = json::parse(grpc.text());
  EXPECT_TRUE(value["a"].is_number_integer()) << grpc.text();
  const HttpReply http = Post("/v1/completions", {{"model", "tiny"}, {"prompt", "Q"}, {"max_tokens", 200},
                                                  {"temperature", 1.0}, {"seed", 9},
                                                  {"response_format", {{"type", "json_schema"},
                                                   {"json_schema", {{"schema", json::parse(schema)}}}}}});
  ASSERT_EQ(http.status, 200) << http.body;
  EXPECT_EQ(Body(http)["choices"][0]["text"], grpc.text());
  g.mutable_parameters()->mutable_response_format()->set_json_schema(R"({"type":"object","minProperties":1})");
  v1::GenerateResponse unused;
  grpc::ClientContext ctx;
  const grpc::Status bad = router_->stub->Generate(&ctx, g, &unused);
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(bad.error_message().find("minProperties"), std::string::npos) << bad.error_message();
}

TEST(OpenAiHttpOwnRouterTest, ApiKeysQueueLimitAndNoGroup) {
  const std::string keys = ::testing::TempDir() + "/openai_keys_" + std::to_string(::getpid());
  std::ofstream(keys) << "sk-good\n";
  OwnWorker worker = StartOwnWorker();
  const int http_port = testing::FreePort();
  RouterProcess router = StartRouter({worker.port}, {"--http_port=" + std::to_string(http_port), "--api_keys_file=" + keys,
                                                     "--max_queued=2", "--max_batch_size=1", "--served_model_name=tiny"});
  ASSERT_GT(router.port, 0) << router.process->Err();
  const json request = {{"model", "tiny"}, {"prompt", "x"}, {"max_tokens", 48}, {"temperature", 0}};
  EXPECT_EQ(Call(http_port, "POST", "/v1/completions", request.dump()).status, 401);
  const HttpReply wrong = Call(http_port, "POST", "/v1/completions", request.dump(), {"Authorization: Bearer sk-bad"});
  EXPECT_EQ(wrong.status, 401);
  EXPECT_EQ(json::parse(wrong.body)["error"]["code"], "invalid_api_key");
  EXPECT_EQ(Call(http_port, "GET", "/v1/models", "", {"Authorization: Bearer sk-bad"}).status, 401);
  EXPECT_EQ(Call(http_port, "GET", "/v1/models/tiny", "", {"Authorization: Bearer sk-bad"}).status, 401);
  EXPECT_EQ(Call(http_port, "GET", "/v1/models/tiny", "", {"Authorization: Bearer sk-good"}).status, 200);
  EXPECT_EQ(Call(http_port, "GET", "/health").status, 200) << "probes need no key";
  std::vector<std::future<HttpReply>> calls;
  for (int i = 0; i < 12; ++i) {
    calls.push_back(std::async(std::launch::async, [&] {
      return Call(http_port, "POST", "/v1/completions", request.dump(), {"Authorization: Bearer sk-good"});
    }));
  }
  int ok = 0, limited = 0;
  for (auto& c : calls) {
    const HttpReply r = c.get();
    ok += r.status == 200;
    limited += r.status == 429;
    if (r.status == 429) EXPECT_NE(r.head.find("Retry-After: 1"), std::string::npos) << r.head;
  }
  EXPECT_GE(ok, 3);
  EXPECT_GE(limited, 1);
  EXPECT_EQ(ok + limited, 12);

  // With its only group gone, the router answers 503.
  worker.process->Kill();
  HttpReply unavailable;
  for (int i = 0; i < 100 && unavailable.status != 503; ++i) {
    unavailable = Call(http_port, "POST", "/v1/completions", request.dump(), {"Authorization: Bearer sk-good"});
    if (unavailable.status != 503) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(unavailable.status, 503);
  EXPECT_NE(unavailable.head.find("Retry-After: 5"), std::string::npos) << unavailable.head;
  EXPECT_EQ(Call(http_port, "GET", "/health").status, 503);
}

}  // namespace
}  // namespace gemma
