// The public Gemma service: validates, tokenizes, and hands requests to the least-loaded healthy worker group.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gemma/v1/gemma.grpc.pb.h"
#include "router/activation_budget.h"
#include "router/api_keys.h"
#include "router/group_set.h"
#include "router/peer_forwarder.h"
#include "router/request_admission.h"
#include "router/request_validation.h"

namespace gemma {

// Where a router's service faces.
enum class ServiceRole {
  kPublic,  // clients: API keys checked; what the groups this router schedules cannot take goes to a peer
  kPeer,    // other routers' forwarded calls (their keys were checked there): placed here, never forwarded again
};

// Thread-safe.
class RouterService final : public v1::Gemma::Service {
 public:
  // Until a group has joined `groups`, calls get UNAVAILABLE. `metrics` and `forwarder` may be null (no forwarding).
  // `activation_budget`, shared by the router's services, bounds the activation bytes of all Score requests at once;
  // null: only the per-request cap.
  RouterService(GroupSet* groups, RouterLimits limits, ApiKeys keys, RouterMetrics* metrics = nullptr,
                ServiceRole role = ServiceRole::kPublic, PeerForwarder* forwarder = nullptr,
                ActivationBudget* activation_budget = nullptr);

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        v1::GenerateResponse* response) override;
  grpc::Status GenerateStream(grpc::ServerContext* context, const v1::GenerateRequest* request,
                              grpc::ServerWriter<v1::GenerateStreamResponse>* writer) override;
  grpc::Status Score(grpc::ServerContext* context, const v1::ScoreRequest* request, v1::ScoreResponse* response) override;
  grpc::Status ScoreStream(grpc::ServerContext* context, const v1::ScoreRequest* request,
                           grpc::ServerWriter<v1::ScoreStreamResponse>* writer) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status Detokenize(grpc::ServerContext* context, const v1::DetokenizeRequest* request,
                          v1::DetokenizeResponse* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::ModelInfo* response) override;

 private:
  // The served model once the caller's API key is checked; Unauthenticated or Unavailable otherwise (counted).
  absl::StatusOr<std::shared_ptr<const ServedModel>> Enter(const grpc::ServerContext& context,
                                                            const char* endpoint);
  // The peer router to send this call to, if any.
  std::optional<std::string> ForwardTarget() const;
  // Tells the forwarding router that this call was admitted here (it must not place it again).
  void Admitted(grpc::ServerContext* context) const;
  void CountRejected(const absl::Status& status, const char* endpoint) const;
  // One output of a generation request: a sample of one of its inputs (a beam search is one output).
  struct Output {
    int32_t input_index = 0;
    int32_t index = 0;
    std::shared_ptr<ActiveRequest> request;
  };
  // Every input's samples admitted (none runs when one is refused); `notify` hears each change (see Origin).
  absl::StatusOr<std::vector<Output>> Start(const ServedModel& model, const v1::GenerateRequest& request,
                                            const char* endpoint, std::function<void()> notify = nullptr);
  // A Score request validated, tokenized and its activations checked (counted when refused). `unary`: the answer
  // must fit one message of the public port.
  struct ScorePlan {
    std::vector<int32_t> prompt;
    ActivationAsk activations;
    int64_t bytes = 0;  // activations and whole logits rows: what the router-wide budget counts
  };
  absl::StatusOr<ScorePlan> PrepareScore(const ServedModel& model, const v1::ScoreRequest& request,
                                         const char* endpoint, bool unary) const;
  // Its adapter and interventions checked, then handed to a group (counted when refused).
  absl::StatusOr<std::shared_ptr<ActiveRequest>> AdmitScore(const ServedModel& model, const v1::ScoreRequest& request,
                                                            ScorePlan plan, const char* endpoint);
  // Waits for the request, cancelling it if the client goes away.
  absl::Status Await(grpc::ServerContext* context, ActiveRequest& request);
  // One input's scoring, admitted.
  struct ScoreRun {
    std::shared_ptr<ActiveRequest> active;
    ActivationAsk ask;
    std::shared_ptr<ActivationBudget::Lease> lease;  // its bytes in the router-wide budget, until it is answered
  };
  // Every input of a Score request prepared (none runs when one is refused), then `forward` asked whether a peer
  // answered the call (then nothing is returned), then each admitted.
  absl::StatusOr<std::vector<ScoreRun>> StartScores(grpc::ServerContext* context, const ServedModel& model,
                                                    const v1::ScoreRequest& request, const char* endpoint, bool unary,
                                                    const std::function<bool()>& forward);

  GroupSet* groups_;
  RouterLimits limits_;
  RequestAdmission admission_;
  ApiKeys keys_;
  RouterMetrics* metrics_;
  const ServiceRole role_;
  PeerForwarder* forwarder_;
  ActivationBudget* activation_budget_;
};

}  // namespace gemma
