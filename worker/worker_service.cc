#include "worker/worker_service.h"

#include <chrono>
#include <set>

#include "protos/grpc_status.h"
#include "worker/step_runner.h"

namespace gemma {

WorkerService::WorkerService(std::unique_ptr<LeaderBackend> backend, worker::v1::ModelInfo info, WorkerMetrics* metrics)
    : info_(std::move(info)), metrics_(metrics), backend_(std::move(backend)) {}

grpc::Status WorkerService::GetModelInfo(grpc::ServerContext*, const worker::v1::GetModelInfoRequest*,
                                         worker::v1::ModelInfo* response) {
  if (!healthy_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "this worker group has failed; restart it");
  *response = info_;
  return grpc::Status::OK;
}

void WorkerService::OnFailure(std::function<void()> callback) {
  std::lock_guard<std::mutex> lock(mu_);
  on_failure_ = std::move(callback);
}

void WorkerService::MarkFailed() {
  if (healthy_.exchange(false) && on_failure_) on_failure_();
}

grpc::Status WorkerService::Step(grpc::ServerContext*, const worker::v1::StepRequest* request,
                                 worker::v1::StepResponse* response) {
  const auto start = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  if (!healthy_ || backend_ == nullptr) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "this worker group has failed; restart it");
  }
  auto result = RunStep(*backend_, *request, &history_);
  if (!result.ok()) {
    // A malformed row, or a penalty history this worker dropped: nothing ran and the group is fine.
    if (!absl::IsInvalidArgument(result.status()) && !absl::IsFailedPrecondition(result.status())) MarkFailed();
    metrics_->RecordFailure(result.status());
    return ToGrpcStatus(result.status());
  }
  *response = std::move(*result);
  std::set<int32_t> blocks;
  for (const auto& s : request->sequences()) blocks.insert(s.block_table().begin(), s.block_table().end());
  metrics_->RecordStep(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
                       response->timings(), static_cast<int>(blocks.size()), request->sequences_size());
  return grpc::Status::OK;
}

bool WorkerService::Heartbeat() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!healthy_ || backend_ == nullptr) return false;
  if (!backend_->Heartbeat().ok()) MarkFailed();
  return healthy_;
}

void WorkerService::Stop() {
  std::lock_guard<std::mutex> lock(mu_);
  backend_.reset();
}

}  // namespace gemma
