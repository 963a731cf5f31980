// Bad requests are refused, naming what is wrong: INVALID_ARGUMENT for bad inputs, input lists, beam and sampling
// parameters, score lists and logits; RESOURCE_EXHAUSTED for a Score answer past --max_message_bytes.
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "nlohmann/json.hpp"
#include "router/router_test_fixture.h"
#include "tests/processes.h"

namespace gemma {
namespace {

// --help lists the router's own flags (not abseil's "No flags matched"), named from the source tree's top.
TEST(RouterHelpTest, HelpListsTheRoutersFlags) {
  const std::string text = testing::CommandOutput(std::string(ROUTER_BINARY) + " --help");
  for (const char* flag : {"--workers ", "--plaintext ", "--http_port ", "--api_keys_file "}) {
    EXPECT_NE(text.find(flag), std::string::npos) << flag << " is missing from:\n" << text;
  }
  EXPECT_NE(text.find("Flags from router/router_main.cc:"), std::string::npos) << text;
}

TEST_F(RouterTest, BadScoreListsAndLogitsAreRefusedNamingTheField) {
  v1::ScoreRequest base;
  for (int id : {2, 651, 1320}) base.mutable_input()->mutable_token_ids()->add_ids(id);
  v1::ScoreRequest no_k = base;
  no_k.set_mode(v1::SCORING_MODE_LOGITS);
  v1::ScoreRequest wide = no_k;
  wide.set_top_logits(257);
  v1::ScoreRequest k_without_mode = base;
  k_without_mode.set_top_logits(3);
  v1::ScoreRequest both = base;
  *both.add_inputs() = base.input();
  v1::ScoreRequest targets;
  *targets.add_inputs() = base.input();
  for (int t : {651, 1320, -1}) targets.add_target_ids(t);
  v1::ScoreRequest bad_second;
  *bad_second.add_inputs() = base.input();
  bad_second.add_inputs()->mutable_token_ids()->add_ids(2);
  for (const auto& [req, needle] : std::vector<std::pair<v1::ScoreRequest, std::string>>{
           {no_k, "top_logits 0 is out of range; allowed: 1..256, or -1 for whole rows"},
           {wide, "top_logits 257 is out of range"},
           {k_without_mode, "top_logits 3 needs mode SCORING_MODE_LOGITS"},
           {both, "input and inputs are both set"},
           {targets, "target_ids apply to `input` alone"},
           {bad_second, "inputs[1]: the input is 1 tokens"}}) {
    v1::ScoreResponse resp;
    grpc::ClientContext ctx;
    const grpc::Status s = Client()->Score(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << needle;
    EXPECT_NE(s.error_message().find(needle), std::string::npos) << s.error_message();
  }
  // Whole rows of two 200-token inputs pass the 4 MiB answer: RESOURCE_EXHAUSTED naming the cap.
  const auto scores = nlohmann::json::parse(testing::ReadFile(GemmaTinyDir() + "/reference/tiny-mqa/scores.json"));
  v1::ScoreRequest big;
  for (int k = 0; k < 2; ++k) {
    auto* input = big.add_inputs()->mutable_token_ids();
    for (int id : scores["prompts"][2]["ids"]) input->add_ids(id);
  }
  big.set_mode(v1::SCORING_MODE_LOGITS);
  big.set_top_logits(-1);
  v1::ScoreResponse resp;
  grpc::ClientContext ctx;
  const grpc::Status s = Client()->Score(&ctx, big, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_NE(s.error_message().find("--max_message_bytes"), std::string::npos) << s.error_message();
}

TEST_F(RouterTest, BadInputListsAreInvalidArgumentNamingTheInput) {
  v1::GenerateRequest both = Ids({2, 651}, 4);
  both.add_inputs()->set_text("x");
  v1::GenerateRequest many;
  for (int i = 0; i < 65; ++i) many.add_inputs()->set_text("x");
  v1::GenerateRequest outputs;
  for (int i = 0; i < 10; ++i) outputs.add_inputs()->set_text("x");
  outputs.mutable_parameters()->set_n(13);
  v1::GenerateRequest bad_second;
  bad_second.add_inputs()->set_text("fine");
  bad_second.add_inputs()->mutable_token_ids()->add_ids(9999);
  for (const auto& [req, needle] : std::vector<std::pair<v1::GenerateRequest, std::string>>{
           {both, "input and inputs are both set; allowed: one of them"},
           {many, "inputs has 65 entries; allowed: 1..64"},
           {outputs, "10 inputs x n 13 = 130 outputs; allowed: at most 128"},
           {bad_second, "inputs[1]: input.token_ids[0] = 9999 is outside the vocabulary"}}) {
    ExpectInvalid(req, needle);
  }
}

TEST_F(RouterTest, BeamParametersOutOfRangeAreInvalidArgumentNamingTheField) {
  const std::vector<std::pair<std::function<void(v1::GenerationParameters*)>, std::string>> cases = {
      {[](auto* p) { p->set_num_beams(11); }, "num_beams 11 is out of range; allowed: 0 (no beam search) to 10"},
      {[](auto* p) { p->set_num_beams(-2); }, "num_beams -2 is out of range"},
      {[](auto* p) { p->set_num_beams(2); p->set_length_penalty(10.5f); }, "length_penalty 10.5 is out of range; allowed: [-10, 10]"},
      {[](auto* p) { p->set_early_stopping(true); }, "allowed: with num_beams 1..10"},
      {[](auto* p) { p->set_num_beams(2); p->set_temperature(0.8f); }, "num_beams 2 cannot be combined with temperature"},
      {[](auto* p) { p->set_num_beams(2); p->add_stop_sequences("x"); }, "cannot be combined with stop_sequences"},
      {[](auto* p) { p->set_num_beams(2); p->set_n(2); }, "cannot be combined with n"},
      {[](auto* p) { p->set_n(129); }, "n 129 is out of range; allowed: 0..128"},
  };
  for (const auto& [set, needle] : cases) {
    v1::GenerateRequest req = Ids({2, 651}, 4);
    set(req.mutable_parameters());
    ExpectInvalid(req, needle);
  }
}

TEST_F(RouterTest, BadRequestsAreInvalidArgument) {
  std::vector<v1::GenerateRequest> bad(5);
  bad[0].mutable_input()->mutable_token_ids();  // no ids
  bad[1].mutable_input()->set_text("x");
  bad[1].mutable_parameters()->set_temperature(-1);
  bad[2].mutable_input()->set_text("x");
  bad[2].mutable_parameters()->set_max_new_tokens(600);  // past the 512 context
  bad[3].mutable_input()->mutable_token_ids()->add_ids(5000);
  auto* m = bad[4].mutable_input()->mutable_chat()->add_messages();
  m->set_role("robot");
  for (const auto& req : bad) {
    v1::GenerateResponse resp;
    grpc::ClientContext ctx;
    const grpc::Status s = Client()->Generate(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_NE(s.error_message().find("allowed"), std::string::npos) << s.error_message();
  }
}

}  // namespace
}  // namespace gemma
