#include "worker/step_runner.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "shard/sampler.h"

namespace gemma {

namespace {

SamplingParams FromProto(const worker::v1::SamplingParams& p) {
  return {p.temperature(),
          p.top_k(),
          p.top_p() == 0.0f ? 1.0f : p.top_p(),
          p.seed(),
          p.repetition_penalty() == 0.0f ? 1.0f : p.repetition_penalty(),
          p.presence_penalty(),
          p.frequency_penalty()};
}

}  // namespace

absl::StatusOr<worker::v1::StepResponse> RunStep(Backend& backend, const worker::v1::StepRequest& request) {
  const int vocab = backend.config().vocab_size;
  std::vector<SequenceStep> steps;
  steps.reserve(request.sequences_size());
  std::vector<SamplingParams> params;  // per sequence, read from the wire once
  for (int i = 0; i < request.sequences_size(); ++i) {
    const auto& s = request.sequences(i);
    if (s.score_targets_size() != 0 && s.score_targets_size() != s.tokens_size()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s.sequence_id(), ": ", s.score_targets_size(),
                                                     " score_targets for ", s.tokens_size(), " tokens; they must match"));
    }
    for (int32_t t : s.score_targets()) {
      if (t < -1 || t >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s.sequence_id(), ": score target ", t,
                                                       " is outside the vocabulary [0, ", vocab, ") (or -1)"));
      }
    }
    if (s.top_logprobs() < 0 || s.top_logprobs() > 20) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s.sequence_id(), ": top_logprobs ", s.top_logprobs(),
                                                     " is outside [0, 20]"));
    }
    params.push_back(FromProto(s.sampling()));
    if (auto st = ValidateSamplingParams(params.back()); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s.sequence_id(), ": ", st.message()));
    }
    SequenceStep step;
    step.tokens = std::span<const int32_t>(s.tokens().data(), s.tokens_size());
    step.start_pos = s.start_pos();
    step.block_table = std::span<const int32_t>(s.block_table().data(), s.block_table_size());
    step.logits = s.score_targets_size() > 0 ? LogitsWanted::kAll : s.sample() ? LogitsWanted::kLast : LogitsWanted::kNone;
    steps.push_back(step);
  }
  // Rows that need nothing but a draw are sampled by the backend (on a GPU, where the logits are); the others
  // (penalties, top log-probs, scoring) read the logits on the host.
  std::vector<RowSample> plain;
  std::vector<int> plain_of(request.sequences_size(), -1);
  bool host_needs_logits = false;
  {
    int row = 0;
    for (int i = 0; i < request.sequences_size(); ++i) {
      const auto& s = request.sequences(i);
      const int rows = steps[i].logits == LogitsWanted::kAll ? s.tokens_size() : steps[i].logits == LogitsWanted::kLast ? 1 : 0;
      if (s.sample() && s.score_targets_size() == 0 && !params[i].has_penalties() && s.top_logprobs() == 0) {
        plain_of[i] = static_cast<int>(plain.size());
        plain.push_back({row + rows - 1, params[i], static_cast<int64_t>(s.start_pos()) + s.tokens_size()});
      } else if (rows > 0) {
        host_needs_logits = true;
      }
      row += rows;
    }
  }
  StepLogits logits;
  std::vector<SampledToken> sampled;
  const auto start = std::chrono::steady_clock::now();
  if (auto st = backend.ForwardAndSample(steps, plain, host_needs_logits, &logits, &sampled); !st.ok()) return st;
  worker::v1::StepResponse response;
  auto* t = response.mutable_timings();
  t->set_forward_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  const StepTimings timings = backend.last_timings();
  t->set_matmul_seconds(timings.matmul_seconds);
  t->set_attention_seconds(timings.attention_seconds);
  t->set_collective_seconds(timings.collective_seconds);

  for (int i = 0; i < request.sequences_size(); ++i) {
    const auto& s = request.sequences(i);
    auto* r = response.add_results();
    r->set_sequence_id(s.sequence_id());
    if (plain_of[i] >= 0) {
      r->set_sampled(true);
      r->set_token(sampled[plain_of[i]].token);
      r->set_logprob(sampled[plain_of[i]].logprob);
      continue;
    }
    if (steps[i].logits == LogitsWanted::kNone) continue;
    const int first = logits.row_begin[i];
    for (int j = 0; j < s.score_targets_size(); ++j) {
      const int target = s.score_targets(j);
      r->add_score_logprobs(target < 0 ? 0.0f : static_cast<float>(LogProbOf(logits.Row(first + j), vocab, target)));
      if (s.top_logprobs() == 0) continue;
      auto* top = r->add_score_top_logprobs();
      for (const auto& [id, lp] : TopLogProbs(logits.Row(first + j), vocab, s.top_logprobs())) {
        auto* tl = top->add_alternatives();
        tl->set_token(id);
        tl->set_logprob(static_cast<float>(lp));
      }
    }
    if (!s.sample()) continue;
    const float* row = logits.Row(first + (steps[i].logits == LogitsWanted::kAll ? s.tokens_size() - 1 : 0));
    const int64_t position = static_cast<int64_t>(s.start_pos()) + s.tokens_size();
    int token;
    if (params[i].has_penalties()) {  // on a copy: reported log-probs stay the model's own
      std::vector<float> penalized(row, row + vocab);
      ApplyPenalties(params[i], s.penalty_history().data(), s.penalty_history_size(), penalized.data(), vocab);
      token = SampleAt(params[i], position, penalized.data(), vocab);
    } else {
      token = SampleAt(params[i], position, row, vocab);
    }
    r->set_sampled(true);
    r->set_token(token);
    r->set_logprob(static_cast<float>(LogProbOf(row, vocab, token)));
    for (const auto& [id, lp] : TopLogProbs(row, vocab, s.top_logprobs())) {
      auto* tl = r->add_top_logprobs();
      tl->set_token(id);
      tl->set_logprob(static_cast<float>(lp));
    }
  }
  return response;
}

}  // namespace gemma
