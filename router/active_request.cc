#include "router/active_request.h"

#include <algorithm>
#include <iterator>

namespace gemma {
namespace {

bool Contains(const std::vector<int32_t>& ids, int32_t id) { return std::find(ids.begin(), ids.end(), id) != ids.end(); }

// Each position's (id, value) pairs as alternatives of `to` (TopLogprobs or TopLogits), each with its token's text.
template <typename Positions, typename SetValue>
void AddAlternatives(const std::vector<std::vector<std::pair<int32_t, float>>>& positions, const Tokenizer& tokenizer,
                     Positions* to, SetValue set_value) {
  for (const auto& position : positions) {
    auto* alternatives = to->Add();
    for (const auto& [id, value] : position) {
      auto* alt = alternatives->add_alternatives();
      alt->set_id(id);
      set_value(alt, value);
      if (auto piece = tokenizer.Decode(std::vector<int32_t>{id}); piece.ok()) alt->set_text(*piece);
    }
  }
}

}  // namespace

ActiveRequest::ActiveRequest(uint64_t id, Options options, const Tokenizer* tokenizer, RouterMetrics* metrics)
    : id_(id),
      options_(std::move(options)),
      tokenizer_(tokenizer),
      metrics_(metrics),
      producer_decodes_(!options_.stop_sequences.empty()),
      text_(tokenizer, options_.stop_sequences),
      activations_(options_.activations.size(), options_.activation_positions.size()) {
  for (int32_t t : options_.prompt) score_.add_token_ids(t);
}

double ActiveRequest::SecondsSince(std::chrono::steady_clock::time_point t) const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

void ActiveRequest::MarkScheduled() {
  absl::MutexLock lock(&mu_);
  if (scheduled_) return;
  scheduled_ = true;
  scheduled_at_ = std::chrono::steady_clock::now();
  if (metrics_) metrics_->Queued(SecondsSince(arrival_));
}

bool ActiveRequest::scheduled() const {
  absl::MutexLock lock(&mu_);
  return scheduled_;
}

void ActiveRequest::RecordEnd(const absl::Status& status, std::optional<v1::FinishReason> reason) {
  if (!metrics_) return;
  std::string why;
  if (options_.score) {
    // Scoring has no finish reason: it is not counted among generation requests.
  } else if (status.ok() && reason.has_value()) {
    switch (*reason) {
      case v1::FINISH_REASON_EOS: why = "eos"; break;
      case v1::FINISH_REASON_STOP_SEQUENCE: why = "stop"; break;
      default: why = "length"; break;
    }
  } else if (absl::IsCancelled(status) || absl::IsDeadlineExceeded(status)) {
    why = "cancelled";
  } else {
    why = "failed";
  }
  metrics_->Finished(status, SecondsSince(arrival_), static_cast<int>(options_.prompt.size()), generated_, why,
                     options_.protocol, options_.endpoint, options_.adapter);
}

void ActiveRequest::Notify() const {
  if (options_.notify) options_.notify();
}

bool ActiveRequest::OnToken(int32_t token, float logprob, const std::vector<std::pair<int32_t, float>>& top) {
  const bool finished = RecordToken(token, logprob, top);
  Notify();
  return finished;
}

bool ActiveRequest::RecordToken(int32_t token, float logprob, const std::vector<std::pair<int32_t, float>>& top) {
  absl::MutexLock lock(&mu_);
  if (finished_) return true;
  if (metrics_) {
    if (generated_ == 0) {
      metrics_->FirstToken(SecondsSince(arrival_));
      if (scheduled_) metrics_->Prefill(SecondsSince(scheduled_at_));
    } else {
      metrics_->InterToken(SecondsSince(last_token_));
    }
  }
  last_token_ = std::chrono::steady_clock::now();
  const bool eos = !options_.ignore_eos && Contains(options_.eos_ids, token);
  const bool stop_id = Contains(options_.stop_ids, token);
  Generated g{token, logprob, top, Shown(token), producer_decodes_, ""};
  if (producer_decodes_ && g.has_text) {
    if (auto d = text_.Add(token); d.ok()) g.delta = std::move(*d);
  }
  pending_.push_back(std::move(g));
  ++generated_;
  if (eos) {
    FinishLocked(v1::FINISH_REASON_EOS);
  } else if (stop_id || (producer_decodes_ && text_.stopped())) {
    FinishLocked(v1::FINISH_REASON_STOP_SEQUENCE);
  } else if (generated_ >= options_.max_new_tokens) {
    FinishLocked(v1::FINISH_REASON_LENGTH);
  }
  return finished_;
}

void ActiveRequest::FinishLocked(v1::FinishReason reason) {
  // Held-back text (a possible stop-sequence start, an incomplete character) goes out with the last token, so
  // the stream keeps one TokenEvent per token.
  if (producer_decodes_) pending_.back().delta += text_.Finish();
  finish_reason_ = reason;
  finished_ = true;
  RecordEnd(absl::OkStatus(), reason);
}

bool ActiveRequest::OnBeams(std::span<const Beam> beams) {
  {
    absl::MutexLock lock(&mu_);
    beams_.assign(beams.begin(), beams.end());
  }
  bool finished = beams.empty();
  if (!beams.empty()) {
    for (size_t i = 0; i < beams[0].tokens.size() && !finished; ++i) {
      finished = RecordToken(beams[0].tokens[i], beams[0].logprobs[i], {});
    }
  }
  if (!finished) Fail(absl::InternalError("the beam search ended without a finished beam"));
  Notify();
  return true;
}

v1::FinishReason ActiveRequest::FinishOf(int32_t token, int32_t generated) const {
  if (!options_.ignore_eos && Contains(options_.eos_ids, token)) return v1::FINISH_REASON_EOS;
  if (Contains(options_.stop_ids, token)) return v1::FINISH_REASON_STOP_SEQUENCE;
  return generated >= options_.max_new_tokens ? v1::FINISH_REASON_LENGTH : v1::FINISH_REASON_UNSPECIFIED;
}

void ActiveRequest::OnScores(const std::vector<float>& logprobs, std::vector<std::vector<std::pair<int32_t, float>>> top,
                             std::vector<std::vector<std::pair<int32_t, float>>> top_logits,
                             std::span<const float> logits) {
  absl::MutexLock lock(&mu_);
  for (float lp : logprobs) score_.add_logprobs(lp);
  std::move(top.begin(), top.end(), std::back_inserter(score_top_));
  std::move(top_logits.begin(), top_logits.end(), std::back_inserter(score_top_logits_));
  score_logits_.insert(score_logits_.end(), logits.begin(), logits.end());
}

absl::Status ActiveRequest::OnActivations(const RowResult& row) {
  absl::MutexLock lock(&mu_);
  return activations_.Add(row);
}

absl::Status ActiveRequest::ActivationsComplete() const {
  absl::MutexLock lock(&mu_);
  if (activations_.complete()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("the worker group returned ", activations_.delivered(), " of the ",
                                          options_.activation_positions.size(), " activation positions asked"));
}

void ActiveRequest::FinishScoring() {
  {
    absl::MutexLock lock(&mu_);
    finished_ = true;
    RecordEnd(absl::OkStatus());
  }
  Notify();
}

void ActiveRequest::Fail(const absl::Status& status) {
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    status_ = status;
    finished_ = true;
    RecordEnd(status);
  }
  Notify();
}

bool ActiveRequest::ResetForRetry() {
  absl::MutexLock lock(&mu_);
  if (finished_ || generated_ > 0) return false;
  score_.clear_logprobs();
  score_top_.clear();
  score_top_logits_.clear();
  score_logits_.clear();
  activations_.Reset();
  return true;
}

void ActiveRequest::Drain() {
  std::vector<Generated> batch;
  std::optional<v1::FinishReason> reason;
  bool finished;
  int32_t generated;
  std::vector<Beam> beams;
  {
    absl::MutexLock lock(&mu_);
    batch.swap(pending_);
    reason = finish_reason_;
    finished = finished_;
    generated = generated_;
    beams = beams_;  // set before the best beam's tokens are recorded, so none of them is streamed on its own
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    Generated& g = batch[i];
    v1::GenerateStreamResponse event;
    v1::GeneratedToken* t = event.mutable_token()->mutable_token();
    t->set_id(g.id);
    if (options_.parameters.logprobs()) t->set_logprob(g.logprob);
    for (const auto& [id, lp] : g.top) {
      auto* alt = t->add_top_logprobs();
      alt->set_id(id);
      alt->set_logprob(lp);
      if (auto piece = tokenizer_->Decode(std::vector<int32_t>{id}); piece.ok()) alt->set_text(*piece);
    }
    std::string delta = std::move(g.delta);
    if (!g.decoded && g.has_text) {
      if (auto d = text_.Add(g.id); d.ok()) delta = std::move(*d);
    }
    if (!producer_decodes_ && reason.has_value() && i + 1 == batch.size()) delta += text_.Finish();
    *response_.add_tokens() = *t;
    response_.mutable_text()->append(delta);
    event.mutable_token()->set_text_delta(std::move(delta));
    if (beams.empty()) events_.push_back(std::move(event));
  }
  if (!finished) return;
  drained_all_ = true;
  if (!reason.has_value()) return;  // failed: the handler reports the status
  response_.set_finish_reason(*reason);
  response_.mutable_usage()->set_prompt_tokens(static_cast<int32_t>(options_.prompt.size()));
  response_.mutable_usage()->set_generated_tokens(generated);
  response_.set_seed(options_.seed);
  if (!beams.empty()) {
    // Beams reorder until the search ends, so each is streamed whole once it has: best first, tagged with its rank.
    for (size_t rank = 0; rank < beams.size(); ++rank) AddBeamEvents(beams[rank], static_cast<int32_t>(rank));
    return;
  }
  v1::GenerateStreamResponse final_event;
  auto* f = final_event.mutable_final();
  f->set_finish_reason(*reason);
  *f->mutable_usage() = response_.usage();
  f->set_seed(options_.seed);
  events_.push_back(std::move(final_event));
}

std::optional<v1::GenerateStreamResponse> ActiveRequest::Next(const std::function<bool()>& abandon) {
  absl::MutexLock read(&read_mu_);
  while (events_.empty() && !drained_all_) {
    bool ready = true;
    {
      absl::MutexLock lock(&mu_);
      const absl::Condition condition(this, &ActiveRequest::Ready);
      if (abandon == nullptr) {
        mu_.Await(condition);
      } else {
        ready = mu_.AwaitWithTimeout(condition, absl::Milliseconds(50));
      }
    }
    if (!ready) {
      if (abandon()) return std::nullopt;
      continue;
    }
    Drain();
  }
  if (events_.empty()) return std::nullopt;
  v1::GenerateStreamResponse e = std::move(events_.front());
  events_.pop_front();
  return e;
}

std::vector<v1::GenerateStreamResponse> ActiveRequest::TakeReady(bool* done) {
  absl::MutexLock read(&read_mu_);
  if (!drained_all_) Drain();
  std::vector<v1::GenerateStreamResponse> out(std::make_move_iterator(events_.begin()),
                                              std::make_move_iterator(events_.end()));
  events_.clear();
  *done = drained_all_;
  return out;
}

absl::Status ActiveRequest::Wait() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(this, &ActiveRequest::Finished));
  return status_;
}

bool ActiveRequest::WaitFor(std::chrono::milliseconds timeout) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(absl::Condition(this, &ActiveRequest::Finished), absl::FromChrono(timeout));
}

v1::GenerateResponse ActiveRequest::Response() {
  absl::MutexLock read(&read_mu_);
  if (!drained_all_) Drain();
  std::vector<Beam> beams;
  {
    absl::MutexLock lock(&mu_);
    beams = beams_;
  }
  if (response_.completions_size() > 0 || beams.empty()) return response_;
  for (size_t rank = 0; rank < beams.size(); ++rank) {
    v1::Completion* c = response_.add_completions();
    *c = BeamCompletion(beams[rank], static_cast<int32_t>(rank));
    std::vector<int32_t> shown;
    for (int32_t id : beams[rank].tokens) {
      if (Shown(id)) shown.push_back(id);
    }
    if (auto text = tokenizer_->Decode(shown); text.ok()) c->set_text(*std::move(text));
  }
  return response_;
}

bool ActiveRequest::Shown(int32_t id) const {
  return !Contains(options_.eos_ids, id) && !Contains(options_.stop_ids, id) && id < tokenizer_->vocab_size();
}

v1::Completion ActiveRequest::BeamCompletion(const Beam& b, int32_t rank) const {
  v1::Completion c;
  c.set_index(rank);
  for (size_t i = 0; i < b.tokens.size(); ++i) {
    v1::GeneratedToken* t = c.add_tokens();
    t->set_id(b.tokens[i]);
    if (options_.parameters.logprobs()) t->set_logprob(b.logprobs[i]);
  }
  const auto generated = static_cast<int32_t>(b.tokens.size());
  c.set_finish_reason(b.tokens.empty() ? v1::FINISH_REASON_LENGTH : FinishOf(b.tokens.back(), generated));
  c.mutable_usage()->set_prompt_tokens(static_cast<int32_t>(options_.prompt.size()));
  c.mutable_usage()->set_generated_tokens(generated);
  c.set_seed(options_.seed);
  c.set_score(b.score);
  c.set_sum_logprob(b.sum_logprob);
  return c;
}

void ActiveRequest::AddBeamEvents(const Beam& beam, int32_t rank) {
  const v1::Completion c = BeamCompletion(beam, rank);
  TextStream text(tokenizer_, {});
  for (int i = 0; i < c.tokens_size(); ++i) {
    v1::GenerateStreamResponse event;
    auto* e = event.mutable_token();
    *e->mutable_token() = c.tokens(i);
    e->set_index(rank);
    std::string delta;
    if (Shown(c.tokens(i).id())) {
      if (auto d = text.Add(c.tokens(i).id()); d.ok()) delta = std::move(*d);
    }
    if (i + 1 == c.tokens_size()) delta += text.Finish();
    e->set_text_delta(std::move(delta));
    events_.push_back(std::move(event));
  }
  v1::GenerateStreamResponse final_event;
  auto* f = final_event.mutable_final();
  f->set_finish_reason(c.finish_reason());
  *f->mutable_usage() = c.usage();
  f->set_seed(c.seed());
  f->set_index(rank);
  f->set_score(c.score());
  f->set_sum_logprob(c.sum_logprob());
  events_.push_back(std::move(final_event));
}

std::vector<std::vector<float>> ActiveRequest::TakeActivations(int32_t* hidden) {
  absl::MutexLock lock(&mu_);
  *hidden = static_cast<int32_t>(activations_.hidden());
  return activations_.Take();
}

v1::ScoreResponse ActiveRequest::ScoreResult() {
  v1::ScoreResponse out;
  std::vector<std::vector<std::pair<int32_t, float>>> top, top_logits;
  {
    absl::MutexLock lock(&mu_);
    out = score_;
    top = score_top_;
    top_logits = score_top_logits_;
    if (!score_logits_.empty()) {
      out.set_logits_data(reinterpret_cast<const char*>(score_logits_.data()), score_logits_.size() * sizeof(float));
      out.add_logits_shape(out.logprobs_size());
      out.add_logits_shape(static_cast<int32_t>(score_logits_.size() / std::max(1, out.logprobs_size())));
    }
  }
  AddAlternatives(top_logits, *tokenizer_, out.mutable_top_logits(), [](auto* a, float v) { a->set_logit(v); });
  if (options_.score_losses) {
    double sum = 0;
    for (float lp : out.logprobs()) {
      out.add_losses(0.0f - lp);  // +0 where a position is not scored
      sum -= lp;
    }
    out.set_loss_sum(sum);
  }
  AddAlternatives(top, *tokenizer_, out.mutable_top_logprobs(), [](auto* a, float v) { a->set_logprob(v); });
  return out;
}

}  // namespace gemma
