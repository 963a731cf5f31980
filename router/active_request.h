// One accepted request on its way through the router: its tokens, stop rules, and the events a client reads.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "engine/activation_collector.h"
#include "engine/engine.h"
#include "engine/step_protocol.h"
#include "engine/token_constraint.h"
#include "gemma/v1/gemma.pb.h"
#include "router/router_metrics.h"
#include "router/text_stream.h"

namespace gemma {

// Thread-safe: a group runner produces tokens, a gRPC handler consumes events. The producer's side is kept
// cheap, since it runs on the group's step thread: it records ids and decides when the request ends, while
// detokenization runs on the consumer's side (Next, Response). Only stop sequences need text to decide the
// end, so a request with stop sequences is detokenized by the producer (incrementally, O(1) per token).
class ActiveRequest {
 public:
  struct Options {
    std::vector<int32_t> prompt;
    int32_t max_new_tokens = 0;
    std::vector<int32_t> eos_ids;   // the model's own end: <eos>, and <end_of_turn> for chat input
    std::vector<int32_t> stop_ids;  // the request's stop_token_ids
    bool ignore_eos = false;        // eos_ids do not end the request (they are still not shown as text)
    std::vector<std::string> stop_sequences;
    v1::GenerationParameters parameters;
    uint64_t seed = 0;
    bool score = false;  // score the prompt instead of generating
    int32_t score_top_logprobs = 0;
    std::vector<int32_t> score_targets;  // one per prompt token (see SequenceSpec::score_targets); empty: next tokens
    bool score_losses = false;           // SCORING_MODE_LOSS: the result carries losses and their sum
    int32_t score_logits = 0;            // SCORING_MODE_LOGITS: the top_logits largest (> 0) or whole rows (-1)
    // The API it came through, for the metrics' protocol and endpoint labels.
    std::string protocol = "grpc";
    std::string endpoint;
    // Called by the producer, outside its locks, after each change a consumer can take (a token, the end): lets
    // an event-driven consumer (the HTTP server's loop) poll with TakeReady instead of blocking a thread.
    std::function<void()> notify;
    // Structured output: what the engine lets this request draw (null: any token).
    std::shared_ptr<TokenConstraint> constraint;
    std::string adapter;  // a LoRA adapter's name; empty: the base model
    std::vector<Intervention> interventions;
    // One of n samples: the request whose prompt (the same) it shares (SequenceSpec::fork_of).
    std::optional<uint64_t> fork_of;
    // Scoring: activations read at these positions (ascending), as SequenceSpec has them.
    std::vector<ActivationPoint> activations;
    std::vector<int32_t> activation_positions;
  };
  // `metrics` may be null.
  ActiveRequest(uint64_t id, Options options, const Tokenizer* tokenizer, RouterMetrics* metrics = nullptr);
  // The group has planned this request's first step (records its queue time once).
  void MarkScheduled() ABSL_LOCKS_EXCLUDED(mu_);
  // Whether a step was ever planned for it (a request not yet started may be answered UNAVAILABLE on shutdown).
  bool scheduled() const ABSL_LOCKS_EXCLUDED(mu_);

  uint64_t id() const { return id_; }
  const Options& options() const { return options_; }

  // Producer side (the group runner). Returns true when the request is now finished.
  bool OnToken(int32_t token, float logprob, const std::vector<std::pair<int32_t, float>>& top)
      ABSL_LOCKS_EXCLUDED(mu_);
  // A beam search's answer (the engine's beams, best first): the best beam's tokens count as generated ones,
  // Response() lists every beam in `completions`, and the events are every beam's tokens and final event in turn,
  // best first, each tagged with the beam's rank (the final event with its score). Returns true (the request is
  // finished).
  bool OnBeams(std::span<const Beam> beams) ABSL_LOCKS_EXCLUDED(mu_);
  // Log-probs of the next scored positions, and their top alternatives (one list per position, or none).
  // With Options::score_logits, their largest logits (`top_logits`) or whole rows (`logits`, [positions, vocab]).
  void OnScores(const std::vector<float>& logprobs, std::vector<std::vector<std::pair<int32_t, float>>> top = {},
                std::vector<std::vector<std::pair<int32_t, float>>> top_logits = {}, std::span<const float> logits = {})
      ABSL_LOCKS_EXCLUDED(mu_);
  // The activations a scored row carries (none when it holds no asked position); Internal when they do not fit
  // what was asked.
  absl::Status OnActivations(const RowResult& row) ABSL_LOCKS_EXCLUDED(mu_);
  // Internal unless every asked activation position arrived.
  absl::Status ActivationsComplete() const ABSL_LOCKS_EXCLUDED(mu_);
  void FinishScoring() ABSL_LOCKS_EXCLUDED(mu_);
  void Fail(const absl::Status& status) ABSL_LOCKS_EXCLUDED(mu_);
  // Before anything reached the client (no token, not finished): forgets partial scores so the request can
  // start again on another group, and returns true. False once it has started.
  bool ResetForRetry() ABSL_LOCKS_EXCLUDED(mu_);

  // Consumer side: waits for the next event; nullopt once the final event was taken, or when `abandon` (checked
  // every 50 ms while waiting) says the caller stopped waiting.
  std::optional<v1::GenerateStreamResponse> Next(const std::function<bool()>& abandon = nullptr)
      ABSL_LOCKS_EXCLUDED(read_mu_, mu_);
  // Non-blocking: every event ready now, in order. After the final event (or a failure) `*done` is set; the
  // status is then Wait()'s, which no longer blocks.
  std::vector<v1::GenerateStreamResponse> TakeReady(bool* done) ABSL_LOCKS_EXCLUDED(read_mu_, mu_);
  // Waits until finished; the status it ended with.
  absl::Status Wait() ABSL_LOCKS_EXCLUDED(mu_);
  // Waits up to `timeout`; whether the request has finished.
  bool WaitFor(std::chrono::milliseconds timeout) ABSL_LOCKS_EXCLUDED(mu_);
  v1::GenerateResponse Response() ABSL_LOCKS_EXCLUDED(read_mu_, mu_);
  // The scores (token ids, log-probs, alternatives); the activations are taken apart (TakeActivations).
  v1::ScoreResponse ScoreResult() ABSL_LOCKS_EXCLUDED(mu_);
  // Once finished: one per Options::activations point, [activation_positions, *hidden] f32 in position order.
  // Moves them out: a second call returns empty ones.
  std::vector<std::vector<float>> TakeActivations(int32_t* hidden) ABSL_LOCKS_EXCLUDED(mu_);
  void Cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

 private:
  // A generated token as the producer saw it.
  struct Generated {
    int32_t id;
    float logprob;
    std::vector<std::pair<int32_t, float>> top;
    bool has_text;       // false for stop ids and ids past the tokenizer's vocabulary
    bool decoded;        // `delta` is set (requests with stop sequences are decoded by the producer)
    std::string delta;
  };

  bool RecordToken(int32_t token, float logprob, const std::vector<std::pair<int32_t, float>>& top)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Notify() const ABSL_LOCKS_EXCLUDED(mu_);
  void FinishLocked(v1::FinishReason reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `reason`: how a generation that completed ended (for the finished-by-reason counter).
  void RecordEnd(const absl::Status& status, std::optional<v1::FinishReason> reason = std::nullopt)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The finish reason of an output that ends with `token` after `generated` tokens.
  v1::FinishReason FinishOf(int32_t token, int32_t generated) const;
  // Turns the tokens produced so far into events and response fields.
  void Drain() ABSL_EXCLUSIVE_LOCKS_REQUIRED(read_mu_) ABSL_LOCKS_EXCLUDED(mu_);
  // Whether a generated id has text (not a stop, within the tokenizer's vocabulary).
  bool Shown(int32_t id) const;
  // Beam `rank` of a finished search, without its text.
  v1::Completion BeamCompletion(const Beam& beam, int32_t rank) const;
  // A finished beam's stream: its tokens, then its final event, each tagged with its rank.
  void AddBeamEvents(const Beam& beam, int32_t rank) ABSL_EXCLUSIVE_LOCKS_REQUIRED(read_mu_);
  // What a consumer waits for: something to drain.
  bool Ready() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !pending_.empty() || finished_; }
  bool Finished() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return finished_; }
  double SecondsSince(std::chrono::steady_clock::time_point t) const;

  const uint64_t id_;
  const Options options_;
  const Tokenizer* tokenizer_;
  RouterMetrics* metrics_;
  const bool producer_decodes_;  // the request has stop sequences
  const std::chrono::steady_clock::time_point arrival_ = std::chrono::steady_clock::now();
  std::atomic<bool> cancelled_{false};

  // Producer state.
  // Consumers wait on mu_ for Ready() or Finished(); every change they wait for is made under mu_, and
  // releasing it re-evaluates their condition.
  mutable absl::Mutex mu_ ABSL_ACQUIRED_AFTER(read_mu_);
  std::chrono::steady_clock::time_point last_token_ ABSL_GUARDED_BY(mu_);
  bool scheduled_ ABSL_GUARDED_BY(mu_) = false;
  std::chrono::steady_clock::time_point scheduled_at_ ABSL_GUARDED_BY(mu_);  // its first step, for prefill time
  std::vector<Generated> pending_ ABSL_GUARDED_BY(mu_);  // not yet drained by the consumer
  int32_t generated_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<v1::FinishReason> finish_reason_ ABSL_GUARDED_BY(mu_);
  v1::ScoreResponse score_ ABSL_GUARDED_BY(mu_);
  std::vector<std::vector<std::pair<int32_t, float>>> score_top_ ABSL_GUARDED_BY(mu_);
  std::vector<std::vector<std::pair<int32_t, float>>> score_top_logits_ ABSL_GUARDED_BY(mu_);
  std::vector<float> score_logits_ ABSL_GUARDED_BY(mu_);
  ActivationCollector activations_ ABSL_GUARDED_BY(mu_);
  std::vector<Beam> beams_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);

  // The detokenizer: guarded by mu_ when producer_decodes_, else by read_mu_ (consumer-owned).
  TextStream text_;

  // Consumer state. Lock order: read_mu_, then mu_.
  absl::Mutex read_mu_;
  std::deque<v1::GenerateStreamResponse> events_ ABSL_GUARDED_BY(read_mu_);
  v1::GenerateResponse response_ ABSL_GUARDED_BY(read_mu_);
  bool drained_all_ ABSL_GUARDED_BY(read_mu_) = false;  // the final event (or failure) was drained
};

}  // namespace gemma
