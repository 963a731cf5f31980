// The rounds a group meets in at start: each round waits for every rank under its own keys and timeout.
#include "worker/group_wait.h"

#include <grpcpp/grpcpp.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "worker/grpc_store.h"

namespace gemma {
namespace {

class GroupWaitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(&rendezvous_);
    server_ = b.BuildAndStart();
    ASSERT_TRUE(server_ != nullptr && port > 0);
    leader_ = absl::StrCat("127.0.0.1:", port);
  }
  void TearDown() override { server_->Shutdown(); }

  GroupWaitOptions Options(int rank, const std::string& stage, std::chrono::milliseconds timeout) {
    GroupWaitOptions o{rank, 2, leader_, timeout};
    o.stage = stage;
    return o;
  }

  RendezvousService rendezvous_;
  std::unique_ptr<grpc::Server> server_;
  std::string leader_;
};

TEST_F(GroupWaitTest, ArrivingDoesNotCountAsLoaded) {
  // Rank 1 is there for the first round only: it announces itself and gives up waiting for rank 0.
  ASSERT_EQ(WaitForGroup(Options(1, "arrived", std::chrono::milliseconds(100))).code(),
            absl::StatusCode::kDeadlineExceeded);
  absl::Status s = WaitForGroup(Options(0, "loaded", std::chrono::milliseconds(300)));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(s.message().find("rank(s) 1 of the group never loaded within --group_wait_timeout_ms 300; loaded: 0"),
            std::string::npos)
      << s;
}

TEST_F(GroupWaitTest, ARankThatLoadsLaterIsWaitedFor) {
  // Rank 1 finishes loading well after rank 0 started waiting; rank 0 waits for it under the round's timeout.
  absl::Status first;
  std::thread early([&] { first = WaitForGroup(Options(0, "loaded", std::chrono::seconds(20))); });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_TRUE(WaitForGroup(Options(1, "loaded", std::chrono::seconds(20))).ok());
  early.join();
  EXPECT_TRUE(first.ok()) << first;
}

}  // namespace
}  // namespace gemma
