// The public Gemma service: validates, tokenizes, and hands requests to the least-loaded healthy worker group.
#pragma once

#include <atomic>
#include <memory>
#include <vector>

#include "gemma/v1/gemma.grpc.pb.h"
#include "router/request_validation.h"
#include "router/tokenizer/tokenizer.h"
#include "router/worker_group.h"

namespace gemma {

// Thread-safe.
class RouterService final : public v1::Gemma::Service {
 public:
  // `metrics` may be null.
  RouterService(std::vector<std::unique_ptr<WorkerGroup>> groups, std::unique_ptr<Tokenizer> tokenizer,
                RouterLimits limits, RouterMetrics* metrics = nullptr);

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        v1::GenerateResponse* response) override;
  grpc::Status GenerateStream(grpc::ServerContext* context, const v1::GenerateRequest* request,
                              grpc::ServerWriter<v1::GenerateStreamResponse>* writer) override;
  grpc::Status Score(grpc::ServerContext* context, const v1::ScoreRequest* request, v1::ScoreResponse* response) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status Detokenize(grpc::ServerContext* context, const v1::DetokenizeRequest* request,
                          v1::DetokenizeResponse* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::ModelInfo* response) override;

 private:
  // Validated, tokenized and submitted; or the status to answer with.
  absl::StatusOr<std::shared_ptr<ActiveRequest>> Start(const v1::GenerateRequest& request);
  absl::StatusOr<std::shared_ptr<ActiveRequest>> Admit(const v1::GenerateRequest& request);
  absl::StatusOr<std::vector<int32_t>> PromptIds(const v1::Input& input);
  absl::Status Submit(const std::shared_ptr<ActiveRequest>& request);
  // Waits for the request, cancelling it if the client goes away.
  absl::Status Await(grpc::ServerContext* context, ActiveRequest& request);

  std::vector<std::unique_ptr<WorkerGroup>> groups_;
  std::unique_ptr<Tokenizer> tokenizer_;
  RouterLimits limits_;
  RouterMetrics* metrics_;
  ModelLimits model_;
  std::atomic<uint64_t> next_id_{1};
};

}  // namespace gemma
