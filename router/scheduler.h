// Continuous (iteration-level) batching for one worker group: which sequences run in the next step.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "router/block_manager.h"

namespace gemma {

struct SchedulerLimits {
  int max_batch_size = 64;        // sequences in one step
  int max_tokens_per_step = 512;  // tokens in one step: decodes (one each) plus prompt chunks
  int max_queued = 256;           // waiting requests; more are refused with ResourceExhausted
};

// One request's state as the scheduler sees it. Not thread-safe.
struct ScheduledSequence {
  uint64_t id = 0;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int32_t prompt_len = 0;
  int32_t max_new_tokens = 0;
  int32_t computed = 0;         // positions already in the KV cache
  std::vector<int32_t> blocks;  // its block table
  int32_t preemptions = 0;
  int32_t generated() const { return static_cast<int32_t>(tokens.size()) - prompt_len; }
};

// A sequence's part of a planned step: tokens[start, start + count), and whether to sample after them.
struct PlannedSequence {
  ScheduledSequence* sequence;
  int32_t start;
  int32_t count;
  bool sample;
};

// First come, first served. Each step: running sequences first (one decode
// token, or their next prompt chunk), then queued ones while the token budget,
// batch size and free KV blocks allow; a long prompt is prefilled in chunks so
// running decodes never stall behind it. When a running sequence cannot get a
// block, the most recently admitted one is preempted: its blocks are freed and
// it goes back to the front of the queue, to be recomputed. Not thread-safe.
class Scheduler {
 public:
  Scheduler(SchedulerLimits limits, int num_blocks, int block_size);

  // ResourceExhausted when the queue is full; InvalidArgument when the request
  // could never fit the KV cache even alone.
  absl::Status Enqueue(std::unique_ptr<ScheduledSequence> sequence);
  std::vector<PlannedSequence> Schedule();
  // After a step: the sampled token of a planned sequence (appended), its
  // computed positions advanced. Call for every planned sequence, with
  // `token` < 0 when nothing was sampled (a prompt chunk).
  void Advance(const PlannedSequence& planned, int32_t token);
  // Removes a sequence (finished, cancelled or failed) and frees its blocks; returns it.
  std::unique_ptr<ScheduledSequence> Remove(uint64_t id);

  int queued() const { return static_cast<int>(queue_.size()); }
  int running() const { return static_cast<int>(running_.size()); }
  int64_t preemptions() const { return preemptions_; }
  const BlockManager& blocks() const { return blocks_; }

 private:
  void Preempt(size_t index);

  SchedulerLimits limits_;
  BlockManager blocks_;
  std::deque<std::unique_ptr<ScheduledSequence>> queue_;
  std::vector<std::unique_ptr<ScheduledSequence>> running_;  // in admission order
  int64_t preemptions_ = 0;
};

}  // namespace gemma
