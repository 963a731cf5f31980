#include "router/active_request.h"

#include "gtest/gtest.h"
#include "tests/testdata.h"

namespace gemma {
namespace {

std::unique_ptr<Tokenizer> Tiny() { return std::move(*Tokenizer::FromFile(testing::GemmaTinyDir() + "/tokenizer.model")); }

struct Streamed {
  int token_events = 0;
  int events_without_token = 0;
  std::string text;
  v1::FinalEvent final_event;
};

Streamed Consume(ActiveRequest& r) {
  Streamed s;
  while (auto e = r.Next()) {
    if (e->has_token()) {
      (e->token().has_token() ? s.token_events : s.events_without_token)++;
      s.text += e->token().text_delta();
    } else {
      s.final_event = e->final();
    }
  }
  return s;
}

// Feeds `ids` as generated tokens to a request that ends by length after them.
Streamed Generate(const Tokenizer& tok, const std::vector<int32_t>& ids, std::vector<std::string> stops) {
  ActiveRequest::Options o;
  o.prompt = {2};
  o.max_new_tokens = static_cast<int32_t>(ids.size());
  o.eos_ids = {tok.eos_id()};
  o.stop_sequences = std::move(stops);
  ActiveRequest r(1, std::move(o), &tok);
  for (int32_t id : ids) r.OnToken(id, -1.0f, {});
  return Consume(r);
}

TEST(ActiveRequestTest, TextHeldBackForAStopSequenceRidesOnTheLastTokenEvent) {
  auto tok = Tiny();
  const std::vector<int32_t> ids = *tok->Encode("Hello there EN");
  const Streamed s = Generate(*tok, ids, {"ENDX"});
  EXPECT_EQ(s.token_events, static_cast<int>(ids.size()));
  EXPECT_EQ(s.events_without_token, 0) << "one TokenEvent per generated token";
  EXPECT_EQ(s.text, "Hello there EN");
  EXPECT_EQ(s.final_event.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(s.final_event.usage().generated_tokens(), static_cast<int>(ids.size()));
}

TEST(ActiveRequestTest, AnIncompleteCharacterAtTheEndRidesOnTheLastTokenEvent) {
  auto tok = Tiny();
  std::vector<int32_t> ids = *tok->Encode("ok \xF0\x9F\x98\x80");
  ids.pop_back();  // the emoji's last byte never comes
  const Streamed s = Generate(*tok, ids, {});
  EXPECT_EQ(s.token_events, static_cast<int>(ids.size()));
  EXPECT_EQ(s.events_without_token, 0);
  EXPECT_EQ(s.text, *tok->Decode(ids));
}

TEST(ActiveRequestTest, EndOfTurnFinishesAsEosAndTheRequestsOwnStopIdsAsStopSequence) {
  auto tok = Tiny();
  ASSERT_GE(tok->end_of_turn_id(), 0);
  auto finish_of = [&](int32_t last) {
    ActiveRequest::Options o;
    o.prompt = {2};
    o.max_new_tokens = 10;
    o.eos_ids = {tok->eos_id(), tok->end_of_turn_id()};  // a chat request
    o.stop_ids = {99};
    ActiveRequest r(1, std::move(o), tok.get());
    r.OnToken(3791, -1.0f, {});
    EXPECT_TRUE(r.OnToken(last, -1.0f, {}));
    EXPECT_TRUE(r.Wait().ok());
    return r.Response().finish_reason();
  };
  EXPECT_EQ(finish_of(tok->end_of_turn_id()), v1::FINISH_REASON_EOS);
  EXPECT_EQ(finish_of(tok->eos_id()), v1::FINISH_REASON_EOS);
  EXPECT_EQ(finish_of(99), v1::FINISH_REASON_STOP_SEQUENCE);
}

// ignore_eos: the model's own end is generated on (and not shown as text); the request's stop ids still end it.
TEST(ActiveRequestTest, IgnoreEosRunsPastTheModelsEnd) {
  auto tok = Tiny();
  ActiveRequest::Options o;
  o.prompt = {2};
  o.max_new_tokens = 3;
  o.eos_ids = {tok->eos_id()};
  o.stop_ids = {99};
  o.ignore_eos = true;
  ActiveRequest r(1, std::move(o), tok.get());
  EXPECT_FALSE(r.OnToken(tok->eos_id(), -1.0f, {}));
  EXPECT_FALSE(r.OnToken(3791, -1.0f, {}));
  EXPECT_TRUE(r.OnToken(tok->eos_id(), -1.0f, {}));
  ASSERT_TRUE(r.Wait().ok());
  EXPECT_EQ(r.Response().finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(r.Response().tokens_size(), 3);
}

TEST(ActiveRequestTest, StreamAndResponseAgreeAndRespectLogprobs) {
  auto tok = Tiny();
  ActiveRequest::Options o;
  o.prompt = {2};
  o.max_new_tokens = 3;
  o.eos_ids = {tok->eos_id()};
  o.parameters.set_logprobs(true);
  ActiveRequest r(1, std::move(o), tok.get());
  r.OnToken(3791, -0.5f, {{3791, -0.5f}, {323, -1.5f}});
  r.OnToken(323, -0.25f, {});
  r.OnToken(tok->eos_id(), -0.125f, {});
  const v1::GenerateResponse resp = r.Response();
  ASSERT_EQ(resp.tokens_size(), 3);
  EXPECT_EQ(resp.tokens(0).logprob(), -0.5f);
  ASSERT_EQ(resp.tokens(0).top_logprobs_size(), 2);
  EXPECT_EQ(resp.tokens(0).top_logprobs(1).text(), *tok->Decode(std::vector<int32_t>{323}));
  EXPECT_EQ(resp.text(), "Hello");
  EXPECT_EQ(resp.finish_reason(), v1::FINISH_REASON_EOS);
  const Streamed s = Consume(r);
  EXPECT_EQ(s.token_events, 3);
  EXPECT_EQ(s.text, "Hello");
}

}  // namespace
}  // namespace gemma
