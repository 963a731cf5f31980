// The router-wide activation budget (--max_activation_bytes_in_flight) through a real router and worker: what Score
// requests hold at once is bounded, one that would pass it is refused at once naming the flag, the bytes come back
// once an answer is sent, and the gauge shows them.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "router/router_test_support.h"

namespace gemma {
namespace {

// tiny-mqa: 3 layers, hidden 128: every residual (4 points) over `len` positions in f32 takes 4 x len x 512 bytes.
constexpr int64_t kBytesPerPosition = 4 * 128 * 4;

v1::ScoreRequest AllResidual(int len) {
  v1::ScoreRequest r;
  for (int i = 0; i < len; ++i) r.mutable_input()->mutable_token_ids()->add_ids(i == 0 ? 2 : 100 + i % 3000);
  r.mutable_activations()->set_all_residual(true);
  return r;
}

class ActivationBudgetTest : public ::testing::Test {
 protected:
  // A per-request cap of 300 positions' worth, and room for 400 positions' worth in flight.
  static void SetUpTestSuite() {
    worker_ = new OwnWorker(StartOwnWorker());
    metrics_port_ = testing::FreePort();
    router_ = new RouterProcess(StartRouter(
        {worker_->port}, {"--max_activation_bytes=" + std::to_string(300 * kBytesPerPosition),
                          "--max_activation_bytes_in_flight=" + std::to_string(400 * kBytesPerPosition),
                          "--metrics_port=" + std::to_string(metrics_port_)}));
    ASSERT_GT(router_->port, 0) << router_->process->Err();
    ASSERT_TRUE(router_->WaitForHealthyGroups(1)) << router_->process->Err();
  }
  static void TearDownTestSuite() {
    delete router_;
    delete worker_;
  }
  static double InFlight() {
    return Sample(testing::HttpGet(metrics_port_, "/metrics"), "gemma_router_activation_bytes_in_flight");
  }
  static grpc::Status Score(const v1::ScoreRequest& request) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::ScoreResponse response;
    return router_->stub->Score(&ctx, request, &response);
  }

  static OwnWorker* worker_;
  static RouterProcess* router_;
  static int metrics_port_;
};

OwnWorker* ActivationBudgetTest::worker_ = nullptr;
RouterProcess* ActivationBudgetTest::router_ = nullptr;
int ActivationBudgetTest::metrics_port_ = 0;

TEST_F(ActivationBudgetTest, InputsOfOneRequestThatTogetherPassTheBudgetAreRefusedNamingTheFlag) {
  // Each input within the per-request cap; together past the whole budget, since they run at once: such a request
  // could never run, so it is refused as invalid (not told to retry), before anything is reserved.
  v1::ScoreRequest request;
  for (int k = 0; k < 3; ++k) {
    auto* input = request.add_inputs()->mutable_token_ids();
    for (int i = 0; i < 150; ++i) input->add_ids(i == 0 ? 2 : 200 + k * 7 + i);
  }
  request.mutable_activations()->set_all_residual(true);
  const grpc::Status s = Score(request);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("send fewer inputs per request"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("--max_activation_bytes_in_flight"), std::string::npos) << s.error_message();
  EXPECT_EQ(InFlight(), 0) << "the inputs admitted before the refusal gave their bytes back";
  // Two of them fit, and run.
  request.mutable_inputs()->RemoveLast();
  EXPECT_TRUE(Score(request).ok());
  EXPECT_EQ(InFlight(), 0);
}

TEST_F(ActivationBudgetTest, ARequestIsRefusedWhileOthersHoldTheBudgetAndRunsOnceTheyAreAnswered) {
  // A stream the client does not read holds its bytes until they are sent: 300 positions' worth, in messages of
  // 150 KiB that the transport's flow control stops once its window is full.
  grpc::ClientContext held_ctx;
  auto held = router_->stub->ScoreStream(&held_ctx, AllResidual(300));
  const double held_bytes = 300.0 * kBytesPerPosition;
  for (int i = 0; i < 200 && InFlight() != held_bytes; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  ASSERT_EQ(InFlight(), held_bytes);

  const grpc::Status refused = Score(AllResidual(200));  // 200 + 300 positions' worth > 400
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  EXPECT_NE(refused.error_message().find("--max_activation_bytes_in_flight"), std::string::npos)
      << refused.error_message();
  EXPECT_TRUE(Score(AllResidual(50)).ok()) << "what still fits beside it runs";
  const grpc::Status plain = Score([] {
    v1::ScoreRequest r = AllResidual(200);
    r.clear_activations();
    return r;
  }());
  EXPECT_TRUE(plain.ok()) << "a request without activations never counts: " << plain.error_message();

  v1::ScoreStreamResponse message;
  int messages = 0;
  while (held->Read(&message)) ++messages;
  EXPECT_TRUE(held->Finish().ok());
  EXPECT_EQ(messages, 1 + 4) << "the scores, then one message per residual point";
  for (int i = 0; i < 200 && InFlight() != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  EXPECT_EQ(InFlight(), 0);
  EXPECT_TRUE(Score(AllResidual(200)).ok()) << "room again once the stream was answered";
}

}  // namespace
}  // namespace gemma
