#include "router/peer_forwarder.h"

#include "absl/strings/str_cat.h"
#include "gemma/worker/v1/worker.pb.h"

namespace gemma {

PeerForwarder::PeerForwarder(std::string router_id) : router_id_(std::move(router_id)) {}

std::unique_ptr<grpc::ClientContext> PeerForwarder::ContextFor(grpc::ServerContext* context) const {
  // Child of the client's call: its deadline holds, and the forwarded call ends when the client leaves.
  auto ctx = grpc::ClientContext::FromServerContext(*context);
  ctx->AddMetadata(kForwardedByHeader, router_id_);
  ctx->AddMetadata(kRouterProtocolHeader, absl::StrCat(static_cast<int>(worker::v1::PROTOCOL_VERSION_CURRENT)));
  return ctx;
}

v1::Gemma::Stub* PeerForwarder::StubFor(const std::string& peer) {
  absl::MutexLock lock(&mu_);
  auto& stub = stubs_[peer];
  if (stub == nullptr) {
    stub = v1::Gemma::NewStub(grpc::CreateChannel(peer, grpc::InsecureChannelCredentials()));
  }
  return stub.get();
}

grpc::Status PeerForwarder::Generate(const std::string& peer, grpc::ServerContext* context,
                                     const v1::GenerateRequest& request, v1::GenerateResponse* response) {
  auto ctx = ContextFor(context);
  return StubFor(peer)->Generate(ctx.get(), request, response);
}

grpc::Status PeerForwarder::GenerateStream(const std::string& peer, grpc::ServerContext* context,
                                           const v1::GenerateRequest& request,
                                           grpc::ServerWriter<v1::GenerateStreamResponse>* writer, bool* relayed) {
  *relayed = false;
  auto ctx = ContextFor(context);
  auto reader = StubFor(peer)->GenerateStream(ctx.get(), request);
  v1::GenerateStreamResponse event;
  while (reader->Read(&event)) {
    if (!writer->Write(event)) {
      ctx->TryCancel();  // the client is gone: the peer frees the request's KV blocks
      break;
    }
    *relayed = true;
  }
  return reader->Finish();
}

grpc::Status PeerForwarder::Score(const std::string& peer, grpc::ServerContext* context,
                                  const v1::ScoreRequest& request, v1::ScoreResponse* response) {
  auto ctx = ContextFor(context);
  return StubFor(peer)->Score(ctx.get(), request, response);
}

}  // namespace gemma
