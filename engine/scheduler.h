// Continuous (iteration-level) batching for one worker group: which sequences run in the next step.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "engine/block_manager.h"
#include "engine/step_protocol.h"
#include "engine/token_constraint.h"

namespace gemma {

struct SchedulerLimits {
  int max_batch_size = 64;        // sequences in one step
  int max_tokens_per_step = 512;  // tokens in one step: decodes (one each) plus prompt chunks
  int max_queued = 256;           // waiting requests; more are refused with ResourceExhausted
  int max_prefill_chunk = 0;      // most prompt tokens of one sequence in one step; 0: the step's budget
  // Most distinct LoRA adapters (SequenceSpec::adapter != 0) in one step, as the worker holds them (a GPU's adapter
  // slots: ModelInfo.max_loras_per_step); 0: no limit. Base-model rows are never limited by it.
  int max_adapters_per_step = 0;
};

// Beam search, as KerasNLP's BeamSampler with Hugging Face's length penalty and stopping rule: each step keeps the
// num_beams best continuations of the live beams (from each beam's 2 * num_beams most likely tokens) by the sum of
// their tokens' log-probs; a candidate that is a stop token ends a hypothesis (with early_stopping, only one among
// the best num_beams candidates), scored sum / length ^ length_penalty (length: its generated tokens, the stop
// token included), as do the live beams at max_new_tokens. The answer is the num_beams best hypotheses. One beam
// with early_stopping is greedy. num_beams 0: no beam search.
struct BeamSearchParams {
  int32_t num_beams = 0;        // [0, kMaxBeams]
  float length_penalty = 1.0f;  // [-10, 10]; > 0 favours longer outputs, < 0 shorter ones
  // true: done once num_beams hypotheses have finished. false: done once no live beam can beat the worst of the
  // best num_beams hypotheses (an exact bound over the lengths it may still reach).
  bool early_stopping = false;
  // Each beam's row returns its 2 * num_beams most likely tokens (a row returns at most 20).
  static constexpr int32_t kMaxBeams = 10;
};

// What a request asks of the engine.
struct SequenceSpec {
  std::vector<int32_t> prompt;
  int32_t max_new_tokens = 0;
  SamplingParams sampling;
  int32_t top_logprobs = 0;       // alternatives with each sampled token, or at each scored position
  bool score = false;              // log-probs of the prompt's tokens instead of generating
  // With score: the token each prompt position's logits are scored against (one per prompt token; -1: none), as
  // KerasNLP's target_ids; scores then cover positions 1..prompt_len (position t + 1 holds target t). Empty: each
  // position against the next prompt token.
  std::vector<int32_t> score_targets;
  // With score: also the logits of each scored position, the score_logits largest (> 0) or whole rows (-1).
  int32_t score_logits = 0;
  std::vector<int32_t> stop_ids;   // generation ends after one of these
  uint64_t cache_salt = 0;         // sequences with other salts never share cached KV (another adapter, say)
  // Structured output: the tokens this sequence may draw, asked at every sampling step. Null: any. One per
  // sequence (it holds the sequence's place in its grammar).
  std::shared_ptr<TokenConstraint> constraint;
  uint32_t adapter = 0;  // the executor's id of a LoRA adapter; 0: the base model (give it its own cache_salt)
  // Applied on every row (they change the sequence's KV, so give it its own cache_salt).
  std::vector<Intervention> interventions;
  // Activations read at these prompt positions (ascending), every prompt position computed; delivered with the
  // updates of the rows that hold them (RowResult::activations), again after a preemption.
  std::vector<ActivationPoint> activations;
  std::vector<int32_t> activation_positions;
  // num_beams > 0: the sequence is a beam search (sampling, penalties, top_logprobs and constraint unset); its
  // beams are sequences of the engine's own ids, and it is answered once, with every beam.
  BeamSearchParams beams;
  // n samples of one prompt: a sequence added before with the same prompt. This one starts from that sequence's
  // blocks (Fork) once it has computed the prompt, so the prompt is computed once. Unset, or a sequence the engine
  // no longer holds: on its own.
  std::optional<uint64_t> fork_of;
  bool computes_every_position() const { return score || !activations.empty(); }
};

// One request's state as the scheduler sees it. Not thread-safe.
struct ScheduledSequence {
  uint64_t id = 0;
  SequenceSpec spec;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int32_t prompt_len = 0;
  int32_t computed = 0;         // positions already in the KV cache
  int32_t scored = 0;           // prompt positions whose log-probs were delivered (a preempted one is recomputed)
  BlockTable blocks;            // its block table
  BlockChain chain;             // its blocks named in the prefix cache
  int32_t preemptions = 0;
  int64_t preempted_at_step = -1;
  bool history_sent = false;    // a step with penalties ran for it: the executor holds its tokens (the engine's)
  bool held = false;            // a beam that has drawn and waits for its siblings: not planned
  int32_t generated() const { return static_cast<int32_t>(tokens.size()) - prompt_len; }
};

// A sequence's part of a planned step: tokens[start, start + count), and whether to sample after them.
struct PlannedSequence {
  ScheduledSequence* sequence;
  int32_t start;
  int32_t count;
  bool sample;
};

// First come, first served. Each step: running sequences first (one decode token, or their next prompt chunk),
// then queued ones while the token budget, batch size and free KV blocks allow; a long prompt is prefilled in
// chunks so running decodes never stall behind it. A queued sequence starts after the longest prefix the prefix
// cache holds for it. When a running sequence cannot get a block, the most recently admitted one is preempted: its
// blocks are released and it goes back to the front of the queue, to be recomputed, but not in the step that
// preempted it. A queued sequence whose prompt shares whole blocks with one still being prefilled waits for them
// (later ones may pass it) rather than computing them again: n samples of one prompt, or requests under one
// system prompt, prefill it once and share its blocks. With max_adapters_per_step, a step holds rows of at most that
// many distinct adapters: running sequences' adapters take the places first (when they alone are more, the places
// go round robin from step to step, and the others' rows wait), then a queued sequence of another adapter waits,
// and once one waits no queued sequence of an adapter passes it (base-model ones still do), so it is never starved.
// Not thread-safe.
class Scheduler {
 public:
  Scheduler(SchedulerLimits limits, int num_blocks, int block_size, bool prefix_cache = false, KvWindow window = {});

  // ResourceExhausted when the queue is full; InvalidArgument when the request could never fit the KV cache alone.
  absl::Status Enqueue(std::unique_ptr<ScheduledSequence> sequence);
  std::vector<PlannedSequence> Schedule();
  // After a step: the sampled token of a planned sequence (appended), its computed positions advanced and its
  // full blocks named in the prefix cache; local blocks whose positions left the window are given back. Call for
  // every planned sequence, with `token` < 0 when nothing was sampled (a prompt chunk).
  void Advance(const PlannedSequence& planned, int32_t token);
  // Blocks for a running sequence to cover `positions` without preempting anyone; false when too few are free.
  bool Reserve(ScheduledSequence& s, int64_t positions) { return blocks_.EnsureCapacity(s.blocks, positions); }
  // Adds `child`, whose tokens begin with `parent`'s, sharing the parent's computed full blocks short of the child's
  // last token (Fork); the positions after them are computed again in the child's own blocks, so a shared block is
  // never written. It runs beside its parent, or waits at the front of the queue when the batch is full or the
  // parent is not running.
  void Fork(const ScheduledSequence& parent, std::unique_ptr<ScheduledSequence> child);
  // A queued or running sequence; null if unknown.
  ScheduledSequence* Find(uint64_t id);
  // Removes a sequence (finished, cancelled or failed) and releases its blocks; returns it (null if unknown).
  std::unique_ptr<ScheduledSequence> Remove(uint64_t id);
  // Removes every sequence, queued and running, and returns them.
  std::vector<std::unique_ptr<ScheduledSequence>> RemoveAll();

  int queued() const { return static_cast<int>(queue_.size()); }
  int running() const { return static_cast<int>(running_.size()); }
  int64_t preemptions() const { return preemptions_; }
  // Prompt tokens of admitted sequences that looked for a cached prefix, and how many of them were found.
  int64_t prefix_query_tokens() const { return prefix_query_tokens_; }
  int64_t prefix_hit_tokens() const { return prefix_hit_tokens_; }
  const BlockManager& blocks() const { return blocks_; }

 private:
  void Preempt(size_t index);
  // Takes the cached prefix of a sequence that holds no blocks.
  void AttachCachedPrefix(ScheduledSequence& s);
  // Whether a running sequence is still computing whole blocks of `s`'s prompt (a queued sequence, holding none).
  bool WaitsForInFlightPrefix(const ScheduledSequence& s) const;
  // The adapters whose running rows may take part in this step (all of them unless they exceed the limit).
  std::vector<uint32_t> RunningAdaptersThisStep();

  SchedulerLimits limits_;
  BlockManager blocks_;
  std::deque<std::unique_ptr<ScheduledSequence>> queue_;
  std::vector<std::unique_ptr<ScheduledSequence>> running_;  // in admission order
  int64_t steps_ = 0;
  int64_t adapter_turn_ = 0;  // where the round robin over running adapters starts when they exceed the limit
  int64_t preemptions_ = 0;
  int64_t prefix_query_tokens_ = 0;
  int64_t prefix_hit_tokens_ = 0;
};

}  // namespace gemma
