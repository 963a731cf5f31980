#include "worker/step_runner.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "shard/runtime/step_runner.h"

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

Intervention FromProto(const worker::v1::Intervention& p) {
  Intervention iv;
  iv.kind = static_cast<InterventionKind>(p.kind());
  iv.layer = p.layer();
  iv.vector.assign(p.vector().begin(), p.vector().end());
  iv.factor = p.factor();
  iv.head = p.head();
  iv.begin_pos = p.begin_pos();
  iv.end_pos = p.end_pos();
  return iv;
}

// Spans into the request's repeated fields, which outlive the step.
template <typename Repeated>
std::span<const int32_t> View(const Repeated& r) {
  return std::span<const int32_t>(r.data(), static_cast<size_t>(r.size()));
}

// The step's shape only: a row that takes its token from the last step counts one token it does not carry.
absl::Status CheckRequestLimits(const worker::v1::StepRequest& request, const StepLimits& limits) {
  static constexpr int32_t kOneToken = 0;
  std::vector<SequenceStep> shape(request.sequences_size());
  for (int i = 0; i < request.sequences_size(); ++i) {
    const auto& s = request.sequences(i);
    shape[i].tokens = s.token_from_last_step() ? std::span<const int32_t>(&kOneToken, 1) : View(s.tokens());
    shape[i].start_pos = s.start_pos();
  }
  return CheckStepLimits(shape, limits);
}

}  // namespace

absl::StatusOr<worker::v1::StepResponse> RunStep(Backend& backend, const worker::v1::StepRequest& request,
                                                 const LastDraws* last_draws, SequenceHistory* history,
                                                 const StepLimits* limits, AdapterStore* adapters) {
  if (limits != nullptr) RETURN_IF_ERROR(CheckRequestLimits(request, *limits));
  if (history != nullptr) {
    for (uint64_t id : request.released_sequences()) history->Release(id);
  }
  std::vector<StepRow> rows(request.sequences_size());
  std::vector<int32_t> drawn(request.sequences_size());  // tokens of rows that take theirs from the last step
  std::vector<std::vector<Intervention>> interventions(request.sequences_size());
  std::vector<std::vector<ActivationPoint>> points(request.sequences_size());
  for (int i = 0; i < request.sequences_size(); ++i) {
    const auto& s = request.sequences(i);
    StepRow& r = rows[i];
    r.sequence_id = s.sequence_id();
    r.tokens = View(s.tokens());
    if (s.token_from_last_step()) {
      auto it = last_draws == nullptr ? LastDraws::const_iterator() : last_draws->find(s.sequence_id());
      if (last_draws == nullptr || it == last_draws->end() || s.tokens_size() != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "sequence ", s.sequence_id(), ": token_from_last_step, but ",
            s.tokens_size() != 0 ? "tokens were sent too" : "the step it runs after drew no token for it"));
      }
      drawn[i] = it->second;
      r.tokens = std::span<const int32_t>(&drawn[i], 1);
    }
    r.start_pos = s.start_pos();
    r.block_table = View(s.block_table());
    r.local_block_table = View(s.local_block_table());
    r.local_block_begin = s.local_block_begin();
    r.sample = s.sample();
    r.sampling = FromProto(s.sampling());
    r.top_logprobs = s.top_logprobs();
    r.score_targets.assign(s.score_targets().begin(), s.score_targets().end());
    r.score_logits = s.score_logits();
    r.penalty_history = View(s.penalty_history());
    r.penalty_prompt_len = s.penalty_prompt_len();
    r.allowed_tokens = std::span<const uint32_t>(s.allowed_tokens().data(), static_cast<size_t>(s.allowed_tokens_size()));
    r.adapter = s.adapter();
    for (const auto& iv : s.interventions()) interventions[i].push_back(FromProto(iv));
    r.interventions = interventions[i];
    for (const auto& p : s.activations()) {
      points[i].push_back({static_cast<ActivationKind>(p.kind()), p.index()});
    }
    r.activations = points[i];
    r.activation_positions = View(s.activation_positions());
  }
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(const std::vector<RowResult> results, RunRows(backend, rows, history, adapters));
  worker::v1::StepResponse response;
  auto* t = response.mutable_timings();
  t->set_forward_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  const StepTimings timings = backend.last_timings();
  t->set_matmul_seconds(timings.matmul_seconds);
  t->set_attention_seconds(timings.attention_seconds);
  t->set_collective_seconds(timings.collective_seconds);
  for (const RowResult& r : results) {
    auto* out = response.add_results();
    out->set_sequence_id(r.sequence_id);
    out->set_sampled(r.sampled);
    if (r.sampled) {
      out->set_token(r.token);
      out->set_logprob(r.logprob);
    }
    for (const TokenLogprob& tl : r.top_logprobs) {
      auto* o = out->add_top_logprobs();
      o->set_token(tl.token);
      o->set_logprob(tl.logprob);
    }
    out->mutable_score_logprobs()->Add(r.score_logprobs.begin(), r.score_logprobs.end());
    for (const std::vector<float>& a : r.activations) {
      out->add_activations()->assign(reinterpret_cast<const char*>(a.data()), a.size() * sizeof(float));
    }
    out->set_activation_rows(r.activation_rows);
    for (const auto& [from, to] : {std::pair{&r.score_top_logprobs, out->mutable_score_top_logprobs()},
                                   std::pair{&r.score_top_logits, out->mutable_score_top_logits()}}) {
      for (const auto& alternatives : *from) {
        auto* top = to->Add();
        for (const TokenLogprob& tl : alternatives) {
          auto* a = top->add_alternatives();
          a->set_token(tl.token);
          a->set_logprob(tl.logprob);
        }
      }
    }
    out->set_score_logits(reinterpret_cast<const char*>(r.score_logits.data()), r.score_logits.size() * sizeof(float));
  }
  return response;
}

}  // namespace gemma
