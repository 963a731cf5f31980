// One accepted request on its way through the router: its tokens, stop rules, and the events a client reads.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "gemma/v1/gemma.pb.h"
#include "router/router_metrics.h"
#include "router/text_stream.h"

namespace gemma {

// Thread-safe: a group runner produces events, a gRPC handler consumes them.
class ActiveRequest {
 public:
  struct Options {
    std::vector<int32_t> prompt;
    int32_t max_new_tokens = 0;
    std::vector<int32_t> stop_ids;  // <eos>, <end_of_turn> for chat, and the request's own
    std::vector<std::string> stop_sequences;
    v1::GenerationParameters parameters;
    uint64_t seed = 0;
    bool score = false;  // score the prompt instead of generating
    int32_t score_top_logprobs = 0;
  };
  // `metrics` may be null.
  ActiveRequest(uint64_t id, Options options, const Tokenizer* tokenizer, RouterMetrics* metrics = nullptr);
  // The group has planned this request's first step (records its queue time once).
  void MarkScheduled();

  uint64_t id() const { return id_; }
  const Options& options() const { return options_; }

  // Producer side (the group runner). Returns true when the request is now finished.
  bool OnToken(int32_t token, float logprob, const std::vector<std::pair<int32_t, float>>& top);
  void OnScores(const std::vector<float>& logprobs);
  void FinishScoring();
  void Fail(const absl::Status& status);

  // Consumer side: waits for the next event; nullopt once the final event was taken.
  std::optional<v1::GenerateStreamResponse> Next();
  // Waits until finished; the status it ended with.
  absl::Status Wait();
  // Waits up to `timeout`; whether the request has finished.
  bool WaitFor(std::chrono::milliseconds timeout);
  v1::GenerateResponse Response();
  v1::ScoreResponse ScoreResult();
  void Cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

 private:
  void FinishLocked(v1::FinishReason reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RecordEnd(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  double SecondsSince(std::chrono::steady_clock::time_point t) const;

  const uint64_t id_;
  const Options options_;
  const Tokenizer* tokenizer_;
  RouterMetrics* metrics_;
  const std::chrono::steady_clock::time_point arrival_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_token_ ABSL_GUARDED_BY(mu_);
  bool scheduled_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> cancelled_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  TextStream text_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::GenerateStreamResponse> events_ ABSL_GUARDED_BY(mu_);
  v1::GenerateResponse response_ ABSL_GUARDED_BY(mu_);
  v1::ScoreResponse score_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gemma
