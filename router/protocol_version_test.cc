// Routers and workers of different releases refuse each other at connect, naming both protocol versions; so do
// two routers when one forwards a call to the other.
#include <grpcpp/grpcpp.h>

#include "gemma/worker/v1/worker.grpc.pb.h"
#include "gtest/gtest.h"
#include "router/router_service.h"
#include "router/worker_group.h"

namespace gemma {
namespace {

// A worker of another release: it answers model info with the protocol version it is given.
class OldWorker final : public worker::v1::Worker::Service {
 public:
  explicit OldWorker(uint32_t version) : version_(version) {}
  grpc::Status GetModelInfo(grpc::ServerContext*, const worker::v1::GetModelInfoRequest*,
                            worker::v1::ModelInfo* info) override {
    info->set_vocab_size(4096);
    info->set_protocol_version(version_);
    return grpc::Status::OK;
  }

 private:
  uint32_t version_;
};

std::unique_ptr<grpc::Server> Serve(grpc::Service* service, int* port) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), port);
  builder.RegisterService(service);
  return builder.BuildAndStart();
}

TEST(ProtocolVersionTest, ARouterRefusesAWorkerOfAnotherRelease) {
  for (uint32_t version : {0u, 1u, 99u}) {
    OldWorker worker(version);
    int port = 0;
    auto server = Serve(&worker, &port);
    ASSERT_GT(port, 0);
    auto group = WorkerGroup::Connect("127.0.0.1:" + std::to_string(port), GroupOptions{}, std::chrono::seconds(5));
    ASSERT_FALSE(group.ok());
    EXPECT_EQ(group.status().code(), absl::StatusCode::kFailedPrecondition);
    const std::string message(group.status().message());
    EXPECT_NE(message.find("speaks worker protocol " + std::to_string(version)), std::string::npos) << message;
    EXPECT_NE(message.find("this router speaks " + std::to_string(worker::v1::PROTOCOL_VERSION_CURRENT)),
              std::string::npos)
        << message;
  }
}

TEST(ProtocolVersionTest, ARoutersPeerPortRefusesAForwardOfAnotherRelease) {
  GroupSet groups;
  RouterService peer(&groups, RouterLimits{}, ApiKeys(), nullptr, ServiceRole::kPeer);
  int port = 0;
  auto server = Serve(&peer, &port);
  ASSERT_GT(port, 0);
  auto stub = v1::Gemma::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  for (const char* version : {"", "1"}) {
    grpc::ClientContext ctx;
    if (*version != '\0') ctx.AddMetadata(kRouterProtocolHeader, version);
    v1::ModelInfo info;
    const grpc::Status s = stub->GetModelInfo(&ctx, {}, &info);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << version;
    EXPECT_NE(s.error_message().find("this router speaks"), std::string::npos) << s.error_message();
  }
  // The same release gets in (and learns that no group has joined yet).
  grpc::ClientContext ctx;
  ctx.AddMetadata(kRouterProtocolHeader, std::to_string(worker::v1::PROTOCOL_VERSION_CURRENT));
  v1::ModelInfo info;
  EXPECT_EQ(stub->GetModelInfo(&ctx, {}, &info).error_code(), grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace gemma
