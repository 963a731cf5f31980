// GenerateStream with beam search against a real router and worker: once the search ends, every beam is streamed
// whole, best first, each message tagged with its beam's rank and the final one with its score, equal to what the
// unary call answers.
#include <grpcpp/grpcpp.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "router/router_test_support.h"

namespace gemma {
namespace {

class BeamStreamTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    worker_ = new OwnWorker(StartOwnWorker());
    router_ = new RouterProcess(StartRouter({worker_->port}));
    ASSERT_GT(router_->port, 0) << router_->process->Err();
    ASSERT_TRUE(router_->WaitForHealthyGroups(1)) << router_->process->Err();
  }
  static void TearDownTestSuite() {
    delete router_;
    delete worker_;
  }

  static v1::GenerateResponse Unary(const v1::GenerateRequest& request) {
    v1::GenerateResponse response;
    grpc::ClientContext ctx;
    const grpc::Status s = router_->stub->Generate(&ctx, request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response;
  }
  static std::vector<v1::GenerateStreamResponse> Streamed(const v1::GenerateRequest& request) {
    grpc::ClientContext ctx;
    auto reader = router_->stub->GenerateStream(&ctx, request);
    std::vector<v1::GenerateStreamResponse> events;
    v1::GenerateStreamResponse e;
    while (reader->Read(&e)) events.push_back(e);
    const grpc::Status s = reader->Finish();
    EXPECT_TRUE(s.ok()) << s.error_message();
    return events;
  }

  static OwnWorker* worker_;
  static RouterProcess* router_;
};

OwnWorker* BeamStreamTest::worker_ = nullptr;
RouterProcess* BeamStreamTest::router_ = nullptr;

// The stream read back as completions: tokens and text joined per (input, beam), in the order the beams came.
struct StreamedBeam {
  int input_index = 0;
  int index = 0;
  std::vector<int> ids;
  std::string text;
  v1::FinalEvent final_event;
  bool ended = false;
};

std::vector<StreamedBeam> Join(const std::vector<v1::GenerateStreamResponse>& events) {
  std::vector<StreamedBeam> out;
  for (const auto& e : events) {
    const int input = e.has_token() ? e.token().input_index() : e.final().input_index();
    const int index = e.has_token() ? e.token().index() : e.final().index();
    if (out.empty() || out.back().ended) {
      out.push_back({input, index});
    }
    StreamedBeam& b = out.back();
    // A beam's messages come together: the next beam starts only after this one's final event.
    EXPECT_EQ(b.input_index, input);
    EXPECT_EQ(b.index, index);
    if (e.has_token()) {
      b.ids.push_back(e.token().token().id());
      b.text += e.token().text_delta();
    } else {
      b.final_event = e.final();
      b.ended = true;
    }
  }
  return out;
}

void ExpectSameBeam(const StreamedBeam& s, const v1::Completion& c) {
  EXPECT_EQ(s.input_index, c.input_index());
  EXPECT_EQ(s.index, c.index());
  ASSERT_EQ(static_cast<int>(s.ids.size()), c.tokens_size());
  for (int i = 0; i < c.tokens_size(); ++i) EXPECT_EQ(s.ids[i], c.tokens(i).id()) << "token " << i;
  EXPECT_EQ(s.text, c.text());
  EXPECT_TRUE(s.ended);
  EXPECT_EQ(s.final_event.finish_reason(), c.finish_reason());
  EXPECT_EQ(s.final_event.usage().generated_tokens(), c.usage().generated_tokens());
  EXPECT_DOUBLE_EQ(s.final_event.score(), c.score());
  EXPECT_DOUBLE_EQ(s.final_event.sum_logprob(), c.sum_logprob());
}

TEST_F(BeamStreamTest, EveryBeamIsStreamedBestFirstWithItsRankAndScore) {
  v1::GenerateRequest request = Ids({2, 651, 1320, 826, 2534}, 8);
  request.mutable_parameters()->set_num_beams(4);
  request.mutable_parameters()->set_logprobs(true);
  const v1::GenerateResponse unary = Unary(request);
  ASSERT_EQ(unary.completions_size(), 4);
  const std::vector<StreamedBeam> beams = Join(Streamed(request));
  ASSERT_EQ(beams.size(), 4u);
  for (int b = 0; b < 4; ++b) {
    SCOPED_TRACE(b);
    EXPECT_EQ(beams[b].index, b) << "best first";
    ExpectSameBeam(beams[b], unary.completions(b));
    if (b > 0) EXPECT_GE(beams[b - 1].final_event.score(), beams[b].final_event.score());
  }
  EXPECT_NE(beams[0].ids, beams[1].ids) << "the beams differ, so the stream shows each";
}

TEST_F(BeamStreamTest, SeveralInputsStreamEachInputsBeamsTaggedWithBoth) {
  v1::GenerateRequest request;
  request.add_inputs()->set_text("The quick brown fox");
  request.add_inputs()->set_text("Once upon a time");
  request.mutable_parameters()->set_max_new_tokens(6);
  request.mutable_parameters()->set_num_beams(2);
  const v1::GenerateResponse unary = Unary(request);
  ASSERT_EQ(unary.completions_size(), 4);
  std::vector<StreamedBeam> beams = Join(Streamed(request));
  ASSERT_EQ(beams.size(), 4u);
  // Inputs run side by side, so their beams may come in either order; within an input, best first.
  std::map<std::pair<int, int>, const StreamedBeam*> by_output;
  std::map<int, int> last_rank = {{0, -1}, {1, -1}};
  for (const StreamedBeam& b : beams) {
    EXPECT_EQ(b.index, last_rank[b.input_index] + 1) << "input " << b.input_index;
    last_rank[b.input_index] = b.index;
    by_output[{b.input_index, b.index}] = &b;
  }
  for (const v1::Completion& c : unary.completions()) {
    SCOPED_TRACE(::testing::Message() << "input " << c.input_index() << ", beam " << c.index());
    ASSERT_TRUE(by_output.count({c.input_index(), c.index()}));
    ExpectSameBeam(*by_output[{c.input_index(), c.index()}], c);
  }
}

TEST_F(BeamStreamTest, OneBeamStreamsAsOneOutputWithItsScore) {
  v1::GenerateRequest request = Ids({2, 651, 1320}, 5);
  request.mutable_parameters()->set_num_beams(1);
  request.mutable_parameters()->set_early_stopping(true);
  const v1::GenerateResponse unary = Unary(request);
  const std::vector<StreamedBeam> beams = Join(Streamed(request));
  ASSERT_EQ(beams.size(), 1u);
  ExpectSameBeam(beams[0], unary.completions(0));
  EXPECT_LT(beams[0].final_event.sum_logprob(), 0);
}

}  // namespace
}  // namespace gemma
