#include "shard/runtime/step_runner.h"

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "shard/runtime/sampler.h"
#include "shard/runtime/sequence_history.h"

namespace gemma {
namespace {

absl::Status ValidateRow(const StepRow& r, int vocab) {
  if (!r.score_targets.empty() && r.score_targets.size() != r.tokens.size()) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", r.sequence_id, ": ", r.score_targets.size(),
                                                   " score_targets for ", r.tokens.size(), " tokens; they must match"));
  }
  for (int32_t t : r.score_targets) {
    if (t < -1 || t >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", r.sequence_id, ": score target ", t,
                                                     " is outside the vocabulary [0, ", vocab, ") (or -1)"));
    }
  }
  if (r.top_logprobs < 0 || r.top_logprobs > 20) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence ", r.sequence_id, ": top_logprobs ", r.top_logprobs, " is outside [0, 20]"));
  }
  if (r.score_logits < -1 || r.score_logits > StepRow::kMaxTopLogits) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", r.sequence_id, ": score_logits ", r.score_logits,
                                                   " is outside [-1, ", StepRow::kMaxTopLogits, "]"));
  }
  if (r.penalty_prompt_len < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence ", r.sequence_id, ": penalty_prompt_len ", r.penalty_prompt_len, " is negative"));
  }
  if (auto st = ValidateSamplingParams(r.sampling); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", r.sequence_id, ": ", st.message()));
  }
  if (!r.allowed_tokens.empty()) {
    if (auto st = ValidateTokenMask(r.allowed_tokens, vocab); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", r.sequence_id, ": ", st.message()));
    }
  }
  return absl::OkStatus();
}

bool KeepsHistory(const StepRow& r) { return r.score_targets.empty() && r.sampling.has_penalties(); }

// The rows of `positions` (ascending) that fall in [start, start + count), as offsets from start.
std::vector<int> OffsetsIn(std::span<const int32_t> positions, int32_t start, size_t count) {
  std::vector<int> out;
  for (int32_t p : positions) {
    if (p >= start && p - static_cast<int64_t>(start) < static_cast<int64_t>(count)) out.push_back(p - start);
  }
  return out;
}

absl::StatusOr<std::vector<std::shared_ptr<const LoraAdapter>>> ResolveAdapters(std::span<const StepRow> rows,
                                                                                AdapterStore* adapters) {
  std::vector<std::shared_ptr<const LoraAdapter>> held(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].adapter == 0) continue;
    if (adapters == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", rows[i].sequence_id, ": adapter ", rows[i].adapter,
                       " asked of a shard without adapters"));
    }
    auto a = adapters->Get(rows[i].adapter);
    if (!a.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", rows[i].sequence_id, ": ", a.status().message()));
    }
    held[i] = *std::move(a);
  }
  return held;
}

}  // namespace

absl::StatusOr<std::vector<RowResult>> RunRows(Backend& backend, std::span<const StepRow> rows,
                                               SequenceHistory* history, AdapterStore* adapters) {
  const int vocab = backend.config().vocab_size;
  for (const StepRow& r : rows) {
    RETURN_IF_ERROR(ValidateRow(r, vocab));
  }
  // Held for the step: an adapter unloaded meanwhile is freed after it.
  ASSIGN_OR_RETURN(const auto held_adapters, ResolveAdapters(rows, adapters));
  // Before the forward pass, so a history this side lacks refuses the step with nothing run. Rows recorded before
  // such a refusal stay recorded: the step comes again with the same start positions (or full histories), and
  // recording a row twice is the same as once.
  if (history != nullptr) {
    for (const StepRow& r : rows) {
      if (!KeepsHistory(r)) continue;
      RETURN_IF_ERROR(history->Record(r.sequence_id, r.start_pos, r.tokens, r.penalty_history));
    }
  }
  std::vector<SequenceStep> steps;
  steps.reserve(rows.size());
  std::vector<std::vector<int>> read_offsets(rows.size());  // offsets in each row of its activation positions
  for (const StepRow& r : rows) {
    SequenceStep step;
    step.tokens = r.tokens;
    step.start_pos = r.start_pos;
    step.block_table = r.block_table;
    step.local_block_table = r.local_block_table;
    step.local_block_begin = r.local_block_begin;
    step.logits = !r.score_targets.empty() ? LogitsWanted::kAll : r.sample ? LogitsWanted::kLast : LogitsWanted::kNone;
    step.adapter = held_adapters[steps.size()].get();
    step.interventions = r.interventions;
    read_offsets[steps.size()] = OffsetsIn(r.activation_positions, r.start_pos, r.tokens.size());
    if (!read_offsets[steps.size()].empty()) step.activations = r.activations;
    steps.push_back(step);
  }
  // Draws are the backend's (on a GPU, where the logits are), penalties and top log-probs included, so that a
  // seeded row draws the same tokens whatever else it asks for; only scoring rows read the logits on the host.
  std::vector<RowSample> plain;
  std::vector<int> plain_of(rows.size(), -1);
  bool host_needs_logits = false;
  int logit_row = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const StepRow& r = rows[i];
    const int n = steps[i].logits == LogitsWanted::kAll ? static_cast<int>(r.tokens.size())
                  : steps[i].logits == LogitsWanted::kLast ? 1
                                                           : 0;
    if (r.sample) {
      plain_of[i] = static_cast<int>(plain.size());
      RowSample& s = plain.emplace_back();
      s.row = logit_row + n - 1;
      s.params = r.sampling;
      s.position = static_cast<int64_t>(r.start_pos) + static_cast<int64_t>(r.tokens.size());
      s.allowed = r.allowed_tokens;
      if (r.sampling.has_penalties()) {
        s.penalty_history = history != nullptr ? history->Tokens(r.sequence_id) : r.penalty_history;
        s.penalty_prompt_len = static_cast<size_t>(r.penalty_prompt_len);
      }
      s.top_logprobs = r.top_logprobs;
    }
    host_needs_logits = host_needs_logits || !r.score_targets.empty();
    logit_row += n;
  }
  StepLogits logits;
  std::vector<SampledToken> sampled;
  RETURN_IF_ERROR(backend.ForwardAndSample(steps, plain, host_needs_logits, &logits, &sampled));

  std::vector<RowResult> results(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    const StepRow& r = rows[i];
    RowResult& out = results[i];
    out.sequence_id = r.sequence_id;
    if (!steps[i].activations.empty()) {
      if (i >= logits.activations.size() || logits.activations[i].size() != steps[i].activations.size()) {
        return absl::InternalError(absl::StrCat("sequence ", r.sequence_id, ": the backend read ",
                                                i < logits.activations.size() ? logits.activations[i].size() : 0,
                                                " of its ", steps[i].activations.size(), " activation points"));
      }
      const std::vector<int>& offsets = read_offsets[i];
      const int64_t width = backend.config().hidden_size;
      out.activation_rows = static_cast<int32_t>(offsets.size());
      for (const std::vector<float>& all : logits.activations[i]) {
        std::vector<float>& picked = out.activations.emplace_back();
        picked.reserve(offsets.size() * width);
        for (int o : offsets) picked.insert(picked.end(), all.begin() + o * width, all.begin() + (o + 1) * width);
      }
    }
    if (plain_of[i] >= 0) {
      SampledToken& drawn = sampled[plain_of[i]];
      out.sampled = true;
      out.token = drawn.token;
      out.logprob = drawn.logprob;
      out.top_logprobs = std::move(drawn.top_logprobs);
    }
    if (r.score_targets.empty()) continue;
    const int first = logits.row_begin[i];
    out.score_logprobs.reserve(r.score_targets.size());
    for (size_t j = 0; j < r.score_targets.size(); ++j) {
      const int target = r.score_targets[j];
      const float* scored = logits.Row(first + static_cast<int>(j));
      out.score_logprobs.push_back(target < 0 ? 0.0f : static_cast<float>(LogProbOf(scored, vocab, target)));
      if (r.score_logits < 0) out.score_logits.insert(out.score_logits.end(), scored, scored + vocab);
      if (r.score_logits > 0) {
        std::vector<int32_t> ids(vocab);
        for (int t = 0; t < vocab; ++t) ids[t] = t;
        const int k = std::min(r.score_logits, vocab);
        std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                          [&](int32_t a, int32_t b) { return scored[a] > scored[b] || (scored[a] == scored[b] && a < b); });
        auto& top = out.score_top_logits.emplace_back();
        for (int t = 0; t < k; ++t) top.push_back({ids[t], scored[ids[t]]});
      }
      if (r.top_logprobs == 0) continue;
      auto& top = out.score_top_logprobs.emplace_back();
      for (const auto& [id, lp] : TopLogProbs(scored, vocab, r.top_logprobs)) top.push_back({id, static_cast<float>(lp)});
    }
  }
  if (history != nullptr) history->EvictBeyondCap();
  return results;
}

}  // namespace gemma
