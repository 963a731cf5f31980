#include "router/peer_forwarder.h"

#include "absl/strings/str_cat.h"
#include "gemma/worker/v1/worker.pb.h"

namespace gemma {

namespace {

// Counts a relayed call for as long as it runs.
class InFlight {
 public:
  explicit InFlight(std::atomic<int>* n) : n_(n) { ++*n_; }
  ~InFlight() { --*n_; }

 private:
  std::atomic<int>* n_;
};

// Relays a peer's stream to the client; whether anything reached it.
template <typename Event>
bool Relay(grpc::ClientReaderInterface<Event>& reader, grpc::ServerWriter<Event>* writer, grpc::ClientContext& ctx) {
  bool relayed = false;
  Event event;
  while (reader.Read(&event)) {
    if (!writer->Write(event)) {
      ctx.TryCancel();  // the client is gone: the peer frees the request's KV blocks
      break;
    }
    relayed = true;
  }
  return relayed;
}

}  // namespace

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
    // A peer that vanished without closing its connections (a node lost) is noticed in seconds, not at the
    // client's deadline.
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
    // The peer holds answers to its own caps (--max_message_bytes, --max_activation_bytes): one with activations
    // may pass gRPC's default 4 MiB and is relayed whole.
    args.SetMaxReceiveMessageSize(-1);
    stub = v1::Gemma::NewStub(grpc::CreateCustomChannel(peer, grpc::InsecureChannelCredentials(), args));
  }
  return stub.get();
}

PeerForwarder::Outcome PeerForwarder::Finish(const grpc::Status& status, const grpc::ClientContext& ctx,
                                             bool relayed) {
  const bool admitted = ctx.GetServerTrailingMetadata().count(kAdmittedTrailer) > 0 ||
                        ctx.GetServerInitialMetadata().count(kAdmittedTrailer) > 0;
  const bool refused = status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                       status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
  return {status, refused && !admitted && !relayed};
}

PeerForwarder::Outcome PeerForwarder::Generate(const std::string& peer, grpc::ServerContext* context,
                                               const v1::GenerateRequest& request, v1::GenerateResponse* response) {
  InFlight counted(&in_flight_);
  auto ctx = ContextFor(context);
  const grpc::Status status = StubFor(peer)->Generate(ctx.get(), request, response);
  return Finish(status, *ctx, false);
}

PeerForwarder::Outcome PeerForwarder::GenerateStream(const std::string& peer, grpc::ServerContext* context,
                                                     const v1::GenerateRequest& request,
                                                     grpc::ServerWriter<v1::GenerateStreamResponse>* writer) {
  InFlight counted(&in_flight_);
  auto ctx = ContextFor(context);
  auto reader = StubFor(peer)->GenerateStream(ctx.get(), request);
  const bool relayed = Relay(*reader, writer, *ctx);
  const grpc::Status status = reader->Finish();
  return Finish(status, *ctx, relayed);
}

PeerForwarder::Outcome PeerForwarder::Score(const std::string& peer, grpc::ServerContext* context,
                                            const v1::ScoreRequest& request, v1::ScoreResponse* response) {
  InFlight counted(&in_flight_);
  auto ctx = ContextFor(context);
  const grpc::Status status = StubFor(peer)->Score(ctx.get(), request, response);
  return Finish(status, *ctx, false);
}

PeerForwarder::Outcome PeerForwarder::ScoreStream(const std::string& peer, grpc::ServerContext* context,
                                                  const v1::ScoreRequest& request,
                                                  grpc::ServerWriter<v1::ScoreStreamResponse>* writer) {
  InFlight counted(&in_flight_);
  auto ctx = ContextFor(context);
  auto reader = StubFor(peer)->ScoreStream(ctx.get(), request);
  const bool relayed = Relay(*reader, writer, *ctx);
  const grpc::Status status = reader->Finish();
  return Finish(status, *ctx, relayed);
}

}  // namespace gemma
