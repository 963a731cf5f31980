#include "worker/worker_metrics.h"

#include "engine/status_macros.h"
#include "gemma/worker/v1/worker.pb.h"
#include "monitoring/build_info.h"
#include "monitoring/metrics_server.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace gemma {
namespace {

prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
}

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerMetrics>> WorkerMetrics::Create(const std::string& address, int rank,
                                                                      int kv_blocks) {
  auto m = std::unique_ptr<WorkerMetrics>(new WorkerMetrics());
  m->registry_ = std::make_shared<prometheus::Registry>();
  const std::map<std::string, std::string> labels = {{"rank", std::to_string(rank)}};
  auto& r = *m->registry_;
  m->labels_ = labels;
  // The group's steps are the leader's to count: a follower exporting them would show zeros for steps it ran.
  if (rank == 0) {
    m->step_seconds_ = &prometheus::BuildHistogram()
                            .Name("gemma_worker_step_duration_seconds")
                            .Help("Wall time of one batched step handled by this group's leader, from request to "
                                  "reply.")
                            .Register(r)
                            .Add(labels, LatencyBuckets());
    m->forward_seconds_ = &prometheus::BuildHistogram()
                               .Name("gemma_worker_forward_duration_seconds")
                               .Help("Wall time of the forward pass of one step.")
                               .Register(r)
                               .Add(labels, LatencyBuckets());
    m->collective_seconds_ = &prometheus::BuildHistogram()
                                  .Name("gemma_worker_collective_duration_seconds")
                                  .Help("Time one step spent in tensor-parallel collectives (all-reduce, all-gather).")
                                  .Register(r)
                                  .Add(labels, LatencyBuckets());
    m->batch_size_ = &prometheus::BuildHistogram()
                          .Name("gemma_worker_step_sequences")
                          .Help("Sequences in one step.")
                          .Register(r)
                          .Add(labels, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256});
    m->step_tokens_ = &prometheus::BuildHistogram()
                           .Name("gemma_worker_step_tokens")
                           .Help("Tokens in one step: decodes (one each) plus prompt chunks.")
                           .Register(r)
                           .Add(labels, prometheus::Histogram::BucketBoundaries{1, 8, 32, 128, 512, 2048, 8192, 32768});
    m->step_limit_ = &prometheus::BuildGauge()
                          .Name("gemma_worker_step_limit")
                          .Help("The largest step this group takes, as routers are told: tokens, sequences, and "
                                "context (positions of one sequence).")
                          .Register(r);
    m->steps_ = &prometheus::BuildCounter().Name("gemma_worker_steps_total").Help("Steps run.").Register(r).Add(labels);
    m->failures_ = &prometheus::BuildCounter()
                        .Name("gemma_worker_step_failures_total")
                        .Help("Steps that failed, by status code.")
                        .Register(r);
    m->kv_blocks_in_use_ = &prometheus::BuildGauge()
                                .Name("gemma_worker_kv_blocks_used")
                                .Help("KV-cache blocks referenced by the sequences of the last step.")
                                .Register(r)
                                .Add(labels);
    m->healthy_ = &prometheus::BuildGauge()
                       .Name("gemma_worker_group_healthy")
                       .Help("1 while every rank of the group answers, 0 once it has failed.")
                       .Register(r)
                       .Add(labels);
    m->healthy_->Set(1);
  }
  m->kv_blocks_ = &prometheus::BuildGauge()
                       .Name("gemma_worker_kv_blocks")
                       .Help("KV-cache blocks in each rank's pool.")
                       .Register(r)
                       .Add(labels);
  m->rank_step_seconds_ = &prometheus::BuildHistogram()
                               .Name("gemma_worker_rank_step_duration_seconds")
                               .Help("This rank's wall time of one step, from receiving it to finishing its shard.")
                               .Register(r)
                               .Add(labels, LatencyBuckets());
  m->rank_collective_seconds_ = &prometheus::BuildHistogram()
                                     .Name("gemma_worker_rank_collective_duration_seconds")
                                     .Help("Time this rank spent in collectives during one step (waiting for peers "
                                           "included, so the fastest rank waits longest).")
                                     .Register(r)
                                     .Add(labels, LatencyBuckets());
  AddBuildInfo(r, worker::v1::PROTOCOL_VERSION_CURRENT);
  m->kv_blocks_->Set(kv_blocks);
  if (!address.empty()) {
    ASSIGN_OR_RETURN(m->exposer_, ServeMetrics(address, m->registry_));
  }
  return m;
}

void WorkerMetrics::RecordStep(double step_seconds, const worker::v1::StepTimings& t, int kv_blocks_in_use,
                               int sequences, int tokens) {
  if (steps_ == nullptr) return;  // a follower's: not its to count
  step_seconds_->Observe(step_seconds);
  step_tokens_->Observe(tokens);
  forward_seconds_->Observe(t.forward_seconds());
  collective_seconds_->Observe(t.collective_seconds());
  batch_size_->Observe(sequences);
  steps_->Increment();
  kv_blocks_in_use_->Set(kv_blocks_in_use);
  RecordRankStep(t.forward_seconds(), t.collective_seconds());
}

void WorkerMetrics::RecordRankStep(double step_seconds, double collective_seconds) {
  rank_step_seconds_->Observe(step_seconds);
  rank_collective_seconds_->Observe(collective_seconds);
}

void WorkerMetrics::SetModelInfo(const std::string& model, const std::string& shape, int tp,
                                 const std::string& device) {
  prometheus::BuildGauge()
      .Name("gemma_worker_model_info")
      .Help("1, labelled with the model this group serves, its shape, tensor-parallel degree and device.")
      .Register(*registry_)
      .Add({{"model", model}, {"shape", shape}, {"tp", std::to_string(tp)}, {"device", device}})
      .Set(1);
}

void WorkerMetrics::SetStepLimits(const StepLimits& limits) {
  if (step_limit_ == nullptr) return;  // a follower's: the leader tells routers
  for (const auto& [name, value] : {std::pair<std::string, int>{"tokens", limits.max_tokens},
                                    {"sequences", limits.max_sequences},
                                    {"context", limits.max_context}}) {
    auto labels = labels_;
    labels["limit"] = name;
    step_limit_->Add(labels).Set(value);
  }
}

void WorkerMetrics::RecordFailure(const absl::Status& status) {
  if (failures_ != nullptr) failures_->Add({{"code", absl::StatusCodeToString(status.code())}}).Increment();
  if (healthy_ != nullptr && !absl::IsInvalidArgument(status)) healthy_->Set(0);
}

void WorkerMetrics::SetHealthy(bool healthy) {
  if (healthy_ != nullptr) healthy_->Set(healthy ? 1 : 0);
}

}  // namespace gemma
