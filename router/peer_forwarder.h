// Sends a public API call on to the peer router that schedules a group with room, and relays its answer.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "gemma/v1/gemma.grpc.pb.h"

namespace gemma {

// Metadata a forwarded call carries: which router sent it (so it is never forwarded again) and the protocol the
// sender speaks (a peer of another release refuses it).
inline constexpr char kForwardedByHeader[] = "gemma-forwarded-by";
inline constexpr char kRouterProtocolHeader[] = "gemma-router-protocol";
// Initial and trailing metadata of a forwarded call the peer admitted (it may have run): the sender must not place
// it again.
inline constexpr char kAdmittedTrailer[] = "gemma-admitted";

// Thread-safe. Peers are reached on their plaintext peer port (inside the cluster only); the caller's deadline
// and cancellation carry over to the forwarded call.
class PeerForwarder {
 public:
  explicit PeerForwarder(std::string router_id);

  // What came back, and whether this router may still place the call itself: the peer never admitted it (it
  // could not be reached, or refused it as full or without a group) and nothing reached the client.
  struct Outcome {
    grpc::Status status;
    bool place_here = false;
  };
  Outcome Generate(const std::string& peer, grpc::ServerContext* context, const v1::GenerateRequest& request,
                   v1::GenerateResponse* response) ABSL_LOCKS_EXCLUDED(mu_);
  Outcome GenerateStream(const std::string& peer, grpc::ServerContext* context, const v1::GenerateRequest& request,
                         grpc::ServerWriter<v1::GenerateStreamResponse>* writer) ABSL_LOCKS_EXCLUDED(mu_);
  Outcome Score(const std::string& peer, grpc::ServerContext* context, const v1::ScoreRequest& request,
                v1::ScoreResponse* response) ABSL_LOCKS_EXCLUDED(mu_);
  Outcome ScoreStream(const std::string& peer, grpc::ServerContext* context, const v1::ScoreRequest& request,
                      grpc::ServerWriter<v1::ScoreStreamResponse>* writer) ABSL_LOCKS_EXCLUDED(mu_);
  // Calls being relayed now: a router that stops waits for them as for its own requests.
  int in_flight() const { return in_flight_; }

 private:
  std::unique_ptr<grpc::ClientContext> ContextFor(grpc::ServerContext* context) const;
  static Outcome Finish(const grpc::Status& status, const grpc::ClientContext& ctx, bool relayed);
  v1::Gemma::Stub* StubFor(const std::string& peer) ABSL_LOCKS_EXCLUDED(mu_);

  const std::string router_id_;
  std::atomic<int> in_flight_{0};
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<v1::Gemma::Stub>> stubs_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gemma
