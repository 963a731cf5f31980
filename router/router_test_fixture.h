// The fixture of router_test's files (router_*_test.cc listed under router_test in CMakeLists.txt): one router in
// front of one tiny-mqa worker, started once per test suite, with a gRPC client, a check for INVALID_ARGUMENT and a
// stream reader. It brings what those files use besides: GoogleTest, the Gemma API stubs, and the helpers of
// router_test_support.h, tests/processes.h and tests/testdata.h. It is not in an anonymous namespace: the files
// share one test suite, RouterTest, and GoogleTest wants one fixture type for it.
#pragma once

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gemma/v1/gemma.grpc.pb.h"
#include "gtest/gtest.h"
#include "router/router_test_support.h"
#include "tests/processes.h"
#include "tests/testdata.h"

namespace gemma {

class RouterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = ::testing::TempDir() + "/router_test_" + std::to_string(::getpid());
    std::remove((dir + ".worker").c_str());
    std::remove((dir + ".router").c_str());
    worker_ = testing::Start(WORKER_BINARY, {"--model=" + GemmaTinyDir() + "/tiny-mqa", "--port_file=" + dir + ".worker",
                                             "--threads=1", "--kv_cache_mb=64", "--group_name=router-test-group"})
                  .release();
    const int worker_port = testing::WaitForPortFile(dir + ".worker", std::chrono::seconds(20));
    ASSERT_GT(worker_port, 0) << worker_->Err();
    worker_port_ = worker_port;
    metrics_port_ = testing::FreePort();
    router_ = testing::Start(ROUTER_BINARY, {"--plaintext", "--workers=127.0.0.1:" + std::to_string(worker_port),
                                             "--port_file=" + dir + ".router", "--max_tokens_per_step=128",
                                             "--metrics_port=" + std::to_string(metrics_port_)})
                  .release();
    port_ = testing::WaitForPortFile(dir + ".router", std::chrono::seconds(20));
    ASSERT_GT(port_, 0) << router_->Err();
  }
  static void TearDownTestSuite() {
    if (::testing::UnitTest::GetInstance()->failed_test_count() > 0) {
      std::fprintf(stderr, "router log:\n%s\nworker log:\n%s\n", router_->Err().c_str(), worker_->Err().c_str());
    }
    delete router_;
    delete worker_;
  }
  std::unique_ptr<v1::Gemma::Stub> Client() {
    return v1::Gemma::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials()));
  }
  // A request refused with INVALID_ARGUMENT whose message holds `needle`.
  void ExpectInvalid(const v1::GenerateRequest& req, const std::string& needle) {
    v1::GenerateResponse resp;
    grpc::ClientContext ctx;
    const grpc::Status s = Client()->Generate(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << needle;
    EXPECT_NE(s.error_message().find(needle), std::string::npos) << s.error_message();
  }
  // Streams a request; returns the token ids and the concatenated text.
  std::pair<std::vector<int>, std::string> Stream(const v1::GenerateRequest& req, v1::FinalEvent* final_event) {
    grpc::ClientContext ctx;
    auto reader = Client()->GenerateStream(&ctx, req);
    v1::GenerateStreamResponse event;
    std::vector<int> ids;
    std::string text;
    while (reader->Read(&event)) {
      if (event.has_token()) {
        if (event.token().has_token()) ids.push_back(event.token().token().id());
        text += event.token().text_delta();
      } else if (final_event) {
        *final_event = event.final();
      }
    }
    const grpc::Status status = reader->Finish();
    EXPECT_TRUE(status.ok()) << status.error_code() << ": " << status.error_message();
    return {ids, text};
  }

  static inline testing::Process* worker_ = nullptr;
  static inline testing::Process* router_ = nullptr;
  static inline int port_ = 0, worker_port_ = 0, metrics_port_ = 0;
};

}  // namespace gemma
