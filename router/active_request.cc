#include "router/active_request.h"

#include <algorithm>

namespace gemma {

ActiveRequest::ActiveRequest(uint64_t id, Options options, const Tokenizer* tokenizer, RouterMetrics* metrics)
    : id_(id),
      options_(std::move(options)),
      tokenizer_(tokenizer),
      metrics_(metrics),
      text_(tokenizer, options_.stop_sequences) {
  for (int32_t t : options_.prompt) score_.add_token_ids(t);
}

double ActiveRequest::SecondsSince(std::chrono::steady_clock::time_point t) const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

void ActiveRequest::MarkScheduled() {
  std::lock_guard<std::mutex> lock(mu_);
  if (scheduled_) return;
  scheduled_ = true;
  if (metrics_) metrics_->Queued(SecondsSince(arrival_));
}

void ActiveRequest::RecordEnd(const absl::Status& status) {
  if (metrics_) {
    metrics_->Finished(status, SecondsSince(arrival_), static_cast<int>(options_.prompt.size()), response_.tokens_size());
  }
}

bool ActiveRequest::OnToken(int32_t token, float logprob, const std::vector<std::pair<int32_t, float>>& top) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return true;
  if (metrics_) {
    if (response_.tokens_size() == 0) {
      metrics_->FirstToken(SecondsSince(arrival_));
    } else {
      metrics_->InterToken(SecondsSince(last_token_));
    }
  }
  last_token_ = std::chrono::steady_clock::now();
  const bool stop_id = std::find(options_.stop_ids.begin(), options_.stop_ids.end(), token) != options_.stop_ids.end();
  v1::GenerateStreamResponse event;
  auto* t = event.mutable_token()->mutable_token();
  t->set_id(token);
  if (options_.parameters.logprobs()) t->set_logprob(logprob);
  for (const auto& [id, lp] : top) {
    auto* alt = t->add_top_logprobs();
    alt->set_id(id);
    alt->set_logprob(lp);
    if (auto piece = tokenizer_->Decode(std::vector<int32_t>{id}); piece.ok()) alt->set_text(*piece);
  }
  *response_.add_tokens() = *t;
  std::string delta;
  if (!stop_id && token < tokenizer_->vocab_size()) {
    auto d = text_.Add(token);
    if (d.ok()) delta = *d;
  }
  event.mutable_token()->set_text_delta(delta);
  events_.push_back(std::move(event));
  const int generated = response_.tokens_size();
  if (stop_id) {
    FinishLocked(token == options_.stop_ids[0] ? v1::FINISH_REASON_EOS : v1::FINISH_REASON_STOP_SEQUENCE);
  } else if (text_.stopped()) {
    FinishLocked(v1::FINISH_REASON_STOP_SEQUENCE);
  } else if (generated >= options_.max_new_tokens) {
    FinishLocked(v1::FINISH_REASON_LENGTH);
  }
  cv_.notify_all();
  return finished_;
}

void ActiveRequest::FinishLocked(v1::FinishReason reason) {
  const std::string tail = text_.Finish();
  if (!tail.empty()) {  // held-back text, released at the end: an event with text and no token
    v1::GenerateStreamResponse event;
    event.mutable_token()->set_text_delta(tail);
    events_.push_back(std::move(event));
  }
  response_.set_text(text_.text());
  response_.set_finish_reason(reason);
  response_.mutable_usage()->set_prompt_tokens(static_cast<int32_t>(options_.prompt.size()));
  response_.mutable_usage()->set_generated_tokens(response_.tokens_size());
  response_.set_seed(options_.seed);
  v1::GenerateStreamResponse final_event;
  auto* f = final_event.mutable_final();
  f->set_finish_reason(reason);
  *f->mutable_usage() = response_.usage();
  f->set_seed(options_.seed);
  events_.push_back(std::move(final_event));
  finished_ = true;
  RecordEnd(absl::OkStatus());
}

void ActiveRequest::OnScores(const std::vector<float>& logprobs) {
  std::lock_guard<std::mutex> lock(mu_);
  for (float lp : logprobs) score_.add_logprobs(lp);
}

void ActiveRequest::FinishScoring() {
  std::lock_guard<std::mutex> lock(mu_);
  finished_ = true;
  RecordEnd(absl::OkStatus());
  cv_.notify_all();
}

void ActiveRequest::Fail(const absl::Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  status_ = status;
  finished_ = true;
  RecordEnd(status);
  cv_.notify_all();
}

std::optional<v1::GenerateStreamResponse> ActiveRequest::Next() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !events_.empty() || (finished_ && events_.empty()); });
  if (events_.empty()) return std::nullopt;
  v1::GenerateStreamResponse e = std::move(events_.front());
  events_.pop_front();
  return e;
}

absl::Status ActiveRequest::Wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return finished_; });
  return status_;
}

bool ActiveRequest::WaitFor(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return finished_; });
}

v1::GenerateResponse ActiveRequest::Response() {
  std::lock_guard<std::mutex> lock(mu_);
  return response_;
}

v1::ScoreResponse ActiveRequest::ScoreResult() {
  std::lock_guard<std::mutex> lock(mu_);
  return score_;
}

}  // namespace gemma
