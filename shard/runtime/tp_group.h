// A tensor-parallel group at run time: rank 0 leads (sends each step to its peers), the others follow.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "shard/runtime/adapter_store.h"
#include "shard/runtime/backend.h"
#include "shard/collective/collective.h"

namespace gemma {

// The wire form of one step between ranks of a group (the ranks run the same build).
std::string EncodeStep(std::span<const SequenceStep> batch);

// Owns the storage the decoded SequenceSteps point into.
struct DecodedStep {
  std::vector<std::vector<int32_t>> tokens, blocks, local_blocks;
  std::vector<std::shared_ptr<const LoraAdapter>> adapters;
  std::vector<std::vector<Intervention>> interventions;
  std::vector<SequenceStep> steps;
};
// InvalidArgument for truncated or inconsistent bytes. Adapters the step names are looked up in `adapters` (read
// from their folder on first use); a step naming one without a store is refused.
absl::StatusOr<DecodedStep> DecodeStep(absl::string_view bytes, AdapterStore* adapters = nullptr);

// Rank 0's backend: Forward validates the step, broadcasts it, then runs its
// own shard, so every rank runs the same step or none does. Heartbeat() sends
// an empty step so idle followers know the leader is alive. The destructor
// tells followers to stop. Not thread-safe.
class LeaderBackend : public Backend {
 public:
  LeaderBackend(std::unique_ptr<Backend> local, std::shared_ptr<HostCollective> collective);
  ~LeaderBackend() override;
  const ModelConfig& config() const override { return local_->config(); }
  int num_kv_blocks() const override { return local_->num_kv_blocks(); }
  int kv_block_size() const override { return local_->kv_block_size(); }
  KvWindow kv_window() const override { return local_->kv_window(); }
  absl::Status Forward(std::span<const SequenceStep> batch, StepLogits* out) override;
  absl::Status ForwardAndSample(std::span<const SequenceStep> batch, std::span<const RowSample> samples,
                                bool logits_to_host, StepLogits* out, std::vector<SampledToken>* tokens) override;
  StepTimings last_timings() const override { return local_->last_timings(); }
  absl::Status Heartbeat();

 private:
  // Validates the step and sends it to the followers.
  absl::Status Announce(std::span<const SequenceStep> batch);

  std::unique_ptr<Backend> local_;
  std::shared_ptr<HostCollective> collective_;
  bool broken_ = false;
};

// A follower rank's loop: receive each step from rank 0 and run it, until the
// leader says stop (OK) or a collective fails (the error: leader gone, peer dead).
// `on_step`, when set, hears each step's wall time on this rank (receiving it included) and its timings.
absl::Status RunFollower(Backend& local, HostCollective& collective,
                         const std::function<void(double seconds, const StepTimings& timings)>& on_step = nullptr,
                         AdapterStore* adapters = nullptr);

}  // namespace gemma
