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
  bool names_adapter = false;  // some row runs with an adapter
  // The first adapter this rank could not read (the step must not run anywhere); OK when every one was read.
  absl::Status adapter_error;
};
// InvalidArgument for truncated or inconsistent bytes. Adapters the step names are looked up in `adapters` (read
// from their folder on first use); a step naming one without a store is refused. An adapter that cannot be read
// does not fail the decoding: it is reported in `adapter_error`, for the group to agree not to run the step.
absl::StatusOr<DecodedStep> DecodeStep(absl::string_view bytes, AdapterStore* adapters = nullptr);

// Rank 0's backend: Forward validates the step, broadcasts it, then runs its
// own shard, so every rank runs the same step or none does. Heartbeat() sends
// an empty step so idle followers know the leader is alive. The destructor
// tells followers to stop. Not thread-safe.
//
// A step that names an adapter is agreed on before it runs, since a follower reads the adapter's slices itself and
// may fail where the leader did not (a file missing or corrupt on its host): every rank says whether it holds each
// adapter (AgreeOnAdapters), and if one does not, no rank runs the step and the leader answers InvalidArgument
// naming that rank and its error, so only the requests of that adapter fail (the engine retries row by row) and
// the group serves on. Steps without adapters skip this round.
class LeaderBackend : public Backend {
 public:
  LeaderBackend(std::unique_ptr<Backend> local, std::shared_ptr<HostCollective> collective);
  ~LeaderBackend() override;
  const ModelConfig& config() const override { return local_->config(); }
  int num_kv_blocks() const override { return local_->num_kv_blocks(); }
  int kv_block_size() const override { return local_->kv_block_size(); }
  KvWindow kv_window() const override { return local_->kv_window(); }
  LoraCapacity lora_capacity() const override { return local_->lora_capacity(); }
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

// After a step naming an adapter has reached every rank: each rank's `own` error (OK when it read every adapter) is
// made known to all, and the result is OK only if every rank's is; otherwise InvalidArgument naming each failing
// rank. Every rank must call it for the same steps. A collective failure comes back as it is (the group is broken).
absl::Status AgreeOnAdapters(HostCollective& collective, const absl::Status& own);

// A follower rank's loop: receive each step from rank 0 and run it, until the
// leader says stop (OK) or a collective fails (the error: leader gone, peer dead).
// `on_step`, when set, hears each step's wall time on this rank (receiving it included) and its timings.
absl::Status RunFollower(Backend& local, HostCollective& collective,
                         const std::function<void(double seconds, const StepTimings& timings)>& on_step = nullptr,
                         AdapterStore* adapters = nullptr);

}  // namespace gemma
