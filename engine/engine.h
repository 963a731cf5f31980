// The engine of one worker group: a scheduler driving a step executor, with the stop rules every caller shares.
// The router runs one per group over the Worker RPC; the gemma command runs one in process.
#pragma once

#include <cstdint>
#include <functional>
#include <future>
#include <optional>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "engine/scheduler.h"
#include "engine/step_executor.h"

namespace gemma {

enum class FinishReason {
  kNone,       // still running
  kLength,     // max_new_tokens generated
  kStopToken,  // generated one of the spec's stop_ids (the update's token)
  kScored,     // every prompt token scored
  kFailed,     // the executor refused this sequence's row (the update's error says why); the others ran
};

// One beam of a finished beam search.
struct Beam {
  std::vector<int32_t> tokens;  // generated, a stop token included
  std::vector<float> logprobs;  // of each token
  double sum_logprob = 0;
  double score = 0;             // sum_logprob / tokens.size() ^ length_penalty
  FinishReason finish = FinishReason::kNone;  // kStopToken or kLength
};

// What one step did for one sequence.
struct SequenceUpdate {
  uint64_t id = 0;
  const RowResult* result = nullptr;  // this step's row: a sampled token, when result->sampled
  // Scoring: the log-probs of prompt tokens [score_from, score_from + scores.size()), each given the tokens
  // before it. Positions already delivered before a preemption are not delivered again.
  std::span<const float> scores;
  // With the spec's top_logprobs > 0: the most likely tokens at each of those positions (else empty).
  std::span<const std::vector<TokenLogprob>> score_top_logprobs;
  // With the spec's score_logits: the largest logits at each of those positions (`logprob` holds the logit), or
  // their whole rows ([positions, vocab]).
  std::span<const std::vector<TokenLogprob>> score_top_logits;
  std::span<const float> score_logits;
  int32_t score_from = 0;
  FinishReason finish = FinishReason::kNone;
  absl::Status error;  // with kFailed
  // A beam search is answered once, when it finishes: its num_beams best hypotheses, best first (`result` is then
  // null, and `finish` is the best one's).
  std::span<const Beam> beams;
};

// InvalidArgument naming the field and its range when a beam search's parameters, or what it is combined with,
// are outside what the engine runs. OK for a spec without beams.
absl::Status ValidateBeamSearch(const SequenceSpec& spec);

struct EngineOptions {
  SchedulerLimits limits;
  int num_blocks = 0;
  KvWindow kv_window;  // the pool's sliding-window layout (the backend's or the worker's); none by default
  int block_size = 16;
  bool prefix_cache = true;
  // Overlapped scheduling, where the executor can start steps: while decoding in the steady state, step N+1 is
  // planned and sent while step N runs (its rows take their token from step N's draws on the worker).
  bool overlap = false;
};

// Not thread-safe: one thread adds, removes and steps.
class Engine {
 public:
  // `executor` must outlive the engine.
  Engine(EngineOptions options, StepExecutor* executor);
  ~Engine();  // waits for a step in flight

  // InvalidArgument for a spec the engine can never run (empty prompt, no room in the KV cache, beam parameters
  // out of range); sampling parameters are the caller's to validate (the executor refuses bad ones, failing only
  // that sequence); ResourceExhausted when the queue is full. Ids from kFirstOwnId up are the engine's own (beams).
  absl::Status Add(uint64_t id, SequenceSpec spec);
  static constexpr uint64_t kFirstOwnId = uint64_t{1} << 63;
  // Ends a sequence (cancelled, or stopped by a rule of the caller's) and releases its blocks; null if unknown,
  // or if a step in flight still runs it (its blocks are released when that step has answered, and nobody hears
  // of its result).
  // Every sequence the engine removes, here or in Step, is reported to the executor (StepExecutor::Release).
  std::unique_ptr<ScheduledSequence> Remove(uint64_t id);
  std::vector<std::unique_ptr<ScheduledSequence>> RemoveAll();

  // Plans and runs one step. `on_update` hears of every planned sequence that got a token or scores, before the
  // engine removes those that finished; it returns true to end that sequence now. An error from the executor
  // fails the whole step and leaves every sequence where it was, except InvalidArgument (a malformed row, and
  // nothing ran): the rows are then run one by one, and only those refused fail (kFailed).
  // `on_planned`, if set, hears the id of every planned sequence before the step runs (a beam search's id for each
  // of its beams).
  using UpdateFn = std::function<bool(const SequenceUpdate&)>;
  absl::Status Step(const UpdateFn& on_update, const std::function<void(uint64_t)>& on_planned = nullptr);
  bool idle() const { return scheduler_.queued() == 0 && scheduler_.running() == 0 && !in_flight_; }
  const Scheduler& scheduler() const { return scheduler_; }
  // Prompt positions computed by steps that ran (a cached prefix is not computed).
  int64_t prefilled_tokens() const { return prefilled_tokens_; }
  // Tokens (positions) each step computed since the last call, oldest first; at most the last 1024 are kept.
  std::vector<int> TakeStepTokens() { return std::exchange(step_tokens_, {}); }
  // Tokens of the step that finished last (0 before any, or once taken).
  int last_step_tokens() const { return step_tokens_.empty() ? 0 : step_tokens_.back(); }
  // Steps sent again with full penalty histories because the executor had lost one (FailedPrecondition).
  int64_t history_resends() const { return history_resends_; }

 private:
  // A beam search: its live beams (sequences of the engine's own ids) step together; when every one has drawn its
  // candidates, the best continuations are chosen and beams fork, continue or end.
  struct BeamGroup {
    SequenceSpec spec;  // the request's (prompt and beam parameters)
    struct Live {
      uint64_t sequence = 0;
      double sum_logprob = 0;
      std::vector<float> logprobs;
    };
    std::vector<Live> live;
    absl::flat_hash_map<uint64_t, std::vector<TokenLogprob>> candidates;  // this round's, by live sequence
    std::vector<Beam> finished;
    int32_t generated = 0;  // tokens each live beam has
  };
  // A beam's row came back: its candidates are kept; once every live beam has some, the group moves on, and is
  // answered when it ends. Beams that end go to `drop`.
  void ApplyBeamRow(uint64_t group, const PlannedSequence& p, const RowResult& r, const absl::Status& error,
                    const UpdateFn& on_update, std::vector<uint64_t>* drop);
  // The sequences waiting to fork from `parent` (SequenceSpec::fork_of) start from its blocks.
  void ReleaseForks(const ScheduledSequence& parent);
  // The id the caller knows a sequence by: a beam's group, else its own.
  uint64_t CallerId(uint64_t sequence) const {
    auto g = beam_of_.find(sequence);
    return g == beam_of_.end() ? sequence : g->second;
  }
  // The beams' next round: true when the search is over.
  bool SelectBeams(BeamGroup& g, std::vector<uint64_t>* drop);
  // Ends a group: its live beams go to `drop`.
  void EndGroup(uint64_t group, std::vector<uint64_t>* drop);

  struct InFlight {
    std::vector<PlannedSequence> plan;
    std::future<absl::StatusOr<std::vector<RowResult>>> result;
  };
  // With `full_history`, a penalized row carries its sequence's whole history (the executor may lack it).
  StepRow RowFor(const PlannedSequence& p, bool full_history = false) const;
  // Removes a sequence from the scheduler and tells the executor it is gone.
  void Drop(uint64_t id);
  void Released(const ScheduledSequence* s);
  // Runs a planned step and waits for it: a malformed row fails only its own sequence, a lost history is resent.
  absl::Status RunNow(const std::vector<PlannedSequence>& plan, std::vector<StepRow> rows, const UpdateFn& on_update);
  // Whether the step after `plan` can be planned before `plan` has answered (and blocks reserved for it).
  bool CanContinue(const std::vector<PlannedSequence>& plan);
  // A step's answer: sequences advanced, callers told, the finished removed (those a step still in flight runs
  // are removed once it has answered).
  void Apply(const std::vector<PlannedSequence>& plan, const std::vector<RowResult>& results,
             const std::vector<absl::Status>& errors, const UpdateFn& on_update,
             const absl::flat_hash_set<uint64_t>& still_running);
  void ReleaseRemoved();
  static absl::StatusOr<std::vector<RowResult>> CheckResults(std::span<const uint64_t> planned,
                                                             absl::StatusOr<std::vector<RowResult>> results);
  // Runs the rows; when the executor refuses the batch as malformed, row by row. `errors[i]` is row i's refusal.
  absl::StatusOr<std::vector<RowResult>> Execute(const std::vector<StepRow>& rows, std::vector<absl::Status>* errors);

  Scheduler scheduler_;
  StepExecutor* executor_;
  const bool overlap_;
  std::optional<InFlight> in_flight_;
  absl::flat_hash_set<uint64_t> removed_;         // removed by the caller while a step in flight runs them
  absl::flat_hash_set<uint64_t> finished_early_;  // finished while a step in flight runs them once more
  int64_t prefilled_tokens_ = 0;
  int64_t history_resends_ = 0;
  std::vector<int> step_tokens_;
  absl::flat_hash_map<uint64_t, BeamGroup> groups_;   // by the request's id
  absl::flat_hash_map<uint64_t, uint64_t> beam_of_;   // a live beam's sequence -> its group
  uint64_t next_own_id_ = kFirstOwnId;
  // Samples waiting for the sequence whose prompt they share (by its id) to compute it.
  absl::flat_hash_map<uint64_t, std::vector<std::unique_ptr<ScheduledSequence>>> forks_waiting_;
};

}  // namespace gemma
