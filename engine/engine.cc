#include "engine/engine.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace gemma {
namespace {

// Activations past f32's range (a steering vector or scale that large, an adapter's scaling, weights out of range)
// make the logits NaN or infinite, and with them the log-probs: such a row fails, saying so, rather than drawing
// token 0 with a null log-prob as if nothing were wrong. Finite logits always give finite log-probs.
absl::Status NonFiniteLogits(const ScheduledSequence& s, const PlannedSequence& p, const RowResult& r) {
  bool finite = !r.sampled || std::isfinite(r.logprob);
  for (float lp : r.score_logprobs) finite = finite && std::isfinite(lp);
  if (finite) return absl::OkStatus();
  const std::string what = absl::StrCat("the model's logits are not finite (NaN or infinite) at positions ", p.start,
                                        "..", p.start + p.count - 1, ": activations went past f32's range");
  // The request's own changes are the likeliest cause, and then the request is what to fix.
  if (!s.spec.interventions.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, "; this request's interventions (steering vectors or ",
                                                   "scales) are the likely cause"));
  }
  return absl::InternalError(
      absl::StrCat(what, s.spec.adapter != 0 ? "; its LoRA adapter's scaling or weights may be the cause" : ""));
}

}  // namespace

Engine::Engine(EngineOptions options, StepExecutor* executor)
    : scheduler_(options.limits, options.num_blocks, options.block_size, options.prefix_cache, options.kv_window),
      executor_(executor),
      overlap_(options.overlap) {}

absl::Status ValidateBeamSearch(const SequenceSpec& spec) {
  const BeamSearchParams& b = spec.beams;
  if (b.num_beams < 0 || b.num_beams > BeamSearchParams::kMaxBeams) {
    return absl::InvalidArgumentError(absl::StrCat("num_beams ", b.num_beams, " is out of range; allowed: 0 (no beam ",
                                                   "search) to ", BeamSearchParams::kMaxBeams));
  }
  if (!(b.length_penalty >= -10.0f && b.length_penalty <= 10.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("length_penalty ", b.length_penalty, " is out of range; allowed: [-10, 10]"));
  }
  if (b.num_beams == 0) return absl::OkStatus();
  const SamplingParams& p = spec.sampling;
  const char* other = spec.score                                        ? "scoring"
                      : p.temperature != 0.0f                           ? "temperature"
                      : p.top_k != 0                                    ? "top_k"
                      : p.top_p != 1.0f                                 ? "top_p"
                      : p.has_penalties()                               ? "penalties"
                      : spec.top_logprobs != 0                          ? "top_logprobs"
                      : spec.constraint != nullptr                      ? "response_format"
                                                                        : nullptr;
  if (other != nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("num_beams ", b.num_beams, " cannot be combined with ", other,
                                                   ": beams rank the model's own log-probs; allowed: num_beams 0, ",
                                                   "or ", other, " unset"));
  }
  return absl::OkStatus();
}

absl::Status Engine::Add(uint64_t id, SequenceSpec spec) {
  if (spec.prompt.empty()) return absl::InvalidArgumentError("the prompt is empty; at least one token is needed");
  if (id >= kFirstOwnId) return absl::InvalidArgumentError(absl::StrCat("sequence id ", id, " is the engine's own"));
  if (spec.max_new_tokens < (spec.score ? 0 : 1)) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens ", spec.max_new_tokens, " is invalid; allowed: ",
                                                   spec.score ? ">= 0 when scoring" : ">= 1"));
  }
  if (!spec.score_targets.empty() && (!spec.score || spec.score_targets.size() != spec.prompt.size())) {
    return absl::InvalidArgumentError(absl::StrCat(spec.score_targets.size(), " score targets for a ",
                                                   spec.prompt.size(), "-token ", spec.score ? "scored" : "generated",
                                                   " prompt; allowed: one per prompt token, when scoring"));
  }
  RETURN_IF_ERROR(ValidateBeamSearch(spec));
  if (groups_.contains(id)) return absl::InvalidArgumentError(absl::StrCat("sequence id ", id, " is in use"));
  auto s = std::make_unique<ScheduledSequence>();
  s->id = spec.beams.num_beams > 0 ? next_own_id_++ : id;
  s->tokens = spec.prompt;
  s->prompt_len = static_cast<int32_t>(spec.prompt.size());
  if (spec.beams.num_beams > 0) {
    // One beam prefills the prompt; the others fork from it after the first draw.
    BeamGroup g;
    g.spec = spec;
    g.live.push_back({s->id, 0.0, {}});
    const uint64_t first = s->id;
    s->spec = std::move(spec);
    RETURN_IF_ERROR(scheduler_.Enqueue(std::move(s)));
    groups_.emplace(id, std::move(g));
    beam_of_[first] = id;
    return absl::OkStatus();
  }
  if (spec.fork_of.has_value() && !spec.computes_every_position()) {
    ScheduledSequence* parent = scheduler_.Find(*spec.fork_of);
    if (parent != nullptr && parent->prompt_len == s->prompt_len && !parent->spec.computes_every_position() &&
        std::equal(s->tokens.begin(), s->tokens.end(), parent->tokens.begin())) {
      s->spec = std::move(spec);
      if (parent->computed >= parent->prompt_len) {
        scheduler_.Fork(*parent, std::move(s));
      } else {
        forks_waiting_[parent->id].push_back(std::move(s));
      }
      return absl::OkStatus();
    }
  }
  s->spec = std::move(spec);
  return scheduler_.Enqueue(std::move(s));
}

void Engine::ReleaseForks(const ScheduledSequence& parent) {
  auto it = forks_waiting_.find(parent.id);
  if (it == forks_waiting_.end()) return;
  std::vector<std::unique_ptr<ScheduledSequence>> forks = std::move(it->second);
  forks_waiting_.erase(it);
  for (auto& f : forks) scheduler_.Fork(parent, std::move(f));
}

std::unique_ptr<ScheduledSequence> Engine::Remove(uint64_t id) {
  if (auto g = groups_.find(id); g != groups_.end()) {
    std::vector<uint64_t> beams;
    for (const auto& l : g->second.live) beams.push_back(l.sequence);
    for (uint64_t b : beams) beam_of_.erase(b);
    groups_.erase(g);
    for (uint64_t b : beams) Remove(b);
    return nullptr;
  }
  for (auto it = forks_waiting_.begin(); it != forks_waiting_.end(); ++it) {
    std::vector<std::unique_ptr<ScheduledSequence>>& forks = it->second;
    for (auto f = forks.begin(); f != forks.end(); ++f) {
      if ((*f)->id != id) continue;
      std::unique_ptr<ScheduledSequence> gone = std::move(*f);
      forks.erase(f);
      if (forks.empty()) forks_waiting_.erase(it);
      return gone;
    }
  }
  if (in_flight_) {
    for (const PlannedSequence& p : in_flight_->plan) {
      if (p.sequence->id == id) {  // the step in flight still writes its blocks: released once it has answered
        removed_.insert(id);
        return nullptr;
      }
    }
  }
  if (ScheduledSequence* s = scheduler_.Find(id)) ReleaseForks(*s);  // they go on without it
  auto gone = scheduler_.Remove(id);
  if (gone != nullptr) Released(gone.get());
  return gone;
}

std::vector<std::unique_ptr<ScheduledSequence>> Engine::RemoveAll() {
  if (in_flight_) {
    in_flight_->result.wait();
    in_flight_.reset();
  }
  removed_.clear();
  finished_early_.clear();
  groups_.clear();
  beam_of_.clear();
  auto gone = scheduler_.RemoveAll();
  for (auto& [parent, forks] : forks_waiting_) {
    for (auto& f : forks) gone.push_back(std::move(f));
  }
  forks_waiting_.clear();
  for (const auto& s : gone) Released(s.get());
  return gone;
}

Engine::~Engine() {
  if (in_flight_) in_flight_->result.wait();
}

void Engine::Released(const ScheduledSequence* s) {
  // Only penalized sequences leave anything behind in the executor.
  if (s->spec.score || !s->spec.sampling.has_penalties()) return;
  const uint64_t id = s->id;
  executor_->Release(std::span<const uint64_t>(&id, 1));
}

StepRow Engine::RowFor(const PlannedSequence& p, bool full_history) const {
  const ScheduledSequence& s = *p.sequence;
  StepRow row;
  row.sequence_id = s.id;
  // A row planned before the previous step answered has no token here yet (it takes that step's draw).
  if (static_cast<size_t>(p.start + p.count) <= s.tokens.size()) {
    row.tokens = std::span<const int32_t>(s.tokens).subspan(p.start, p.count);
  }
  row.start_pos = p.start;
  row.block_table = s.blocks.global;
  row.local_block_table = s.blocks.local;
  row.local_block_begin = s.blocks.local_begin;
  row.adapter = s.spec.adapter;
  row.interventions = s.spec.interventions;
  if (p.start < s.prompt_len) {
    row.activations = s.spec.activations;
    row.activation_positions = s.spec.activation_positions;
  }
  if (s.spec.score) {
    row.score_targets.resize(p.count);
    for (int i = 0; i < p.count; ++i) {
      const int next = p.start + i + 1;
      const int32_t target = !s.spec.score_targets.empty() ? s.spec.score_targets[p.start + i]
                             : next < s.prompt_len      ? s.tokens[next]
                                                        : -1;
      row.score_targets[i] = next > s.scored ? target : -1;  // scored before a preemption: not again
    }
    row.top_logprobs = s.spec.top_logprobs;
    row.score_logits = s.spec.score_logits;
    return row;
  }
  row.sample = p.sample;
  row.sampling = s.spec.sampling;
  // A beam ranks the continuations of every live beam: 2 * num_beams of each hold the best num_beams that do not
  // stop, as Hugging Face and vLLM take them.
  row.top_logprobs = s.spec.beams.num_beams > 0 ? 2 * s.spec.beams.num_beams : s.spec.top_logprobs;
  if (p.sample && Constrains(s.spec.constraint.get())) row.allowed_tokens = s.spec.constraint->Allowed();
  if (s.spec.sampling.has_penalties()) {
    row.penalty_prompt_len = s.prompt_len;
    // The executor builds the history from the rows themselves; a first row after a cached prefix has no rows
    // before it to build from.
    if (full_history || (!s.history_sent && p.start > 0)) {
      row.penalty_history = std::span<const int32_t>(s.tokens).first(p.start + p.count);
    }
  }
  return row;
}

absl::Status Engine::Step(const UpdateFn& on_update, const std::function<void(uint64_t)>& on_planned) {
  if (!in_flight_) {
    std::vector<PlannedSequence> plan = scheduler_.Schedule();
    if (plan.empty()) return absl::OkStatus();
    // Decided before the rows are made: reserving blocks may move a block table the rows would point into.
    const bool pipeline = CanContinue(plan);
    std::vector<StepRow> rows;
    rows.reserve(plan.size());
    for (const PlannedSequence& p : plan) {
      rows.push_back(RowFor(p));
      if (on_planned) on_planned(CallerId(p.sequence->id));
    }
    if (!pipeline) return RunNow(plan, std::move(rows), on_update);
    in_flight_ = InFlight{std::move(plan), executor_->Start(rows, /*after_previous=*/false)};
  }
  // A step is in flight. Its successor is planned and sent before its answer comes, so that the worker never
  // waits for the router between them; then its answer is applied.
  std::optional<InFlight> next;
  if (CanContinue(in_flight_->plan)) {
    std::vector<PlannedSequence> plan;
    std::vector<StepRow> rows;
    for (const PlannedSequence& p : in_flight_->plan) {
      PlannedSequence q{p.sequence, p.start + p.count, 1, true};
      StepRow row = RowFor(q);
      row.tokens = {};
      row.token_from_last_step = true;
      rows.push_back(row);
      plan.push_back(q);
      if (on_planned) on_planned(CallerId(q.sequence->id));
    }
    next = InFlight{std::move(plan), executor_->Start(rows, /*after_previous=*/true)};
  }
  InFlight done = std::move(*in_flight_);
  in_flight_ = std::move(next);
  std::vector<uint64_t> planned_ids;
  for (const PlannedSequence& p : done.plan) planned_ids.push_back(p.sequence->id);
  absl::StatusOr<std::vector<RowResult>> results = CheckResults(planned_ids, done.result.get());
  if (!results.ok()) {
    if (in_flight_) {
      in_flight_->result.wait();  // it cannot run without the draws of the one that failed
      in_flight_.reset();
    }
    if (!absl::IsInvalidArgument(results.status()) && !absl::IsFailedPrecondition(results.status())) {
      ReleaseRemoved();
      return results.status();
    }
    // Refused and not run (a malformed row, or a worker that no longer holds this router's session): the step
    // runs again on its own, where a malformed row fails only its sequence. Its sequences were not advanced, and
    // the draws its rows were to take are known by now.
    std::vector<PlannedSequence> again;
    for (const PlannedSequence& p : done.plan) {
      if (!removed_.contains(p.sequence->id) && !finished_early_.contains(p.sequence->id)) again.push_back(p);
    }
    ReleaseRemoved();
    if (again.empty()) return absl::OkStatus();
    std::vector<StepRow> rows;
    for (const PlannedSequence& p : again) rows.push_back(RowFor(p));
    return RunNow(again, std::move(rows), on_update);
  }
  absl::flat_hash_set<uint64_t> still_running;
  if (in_flight_) {
    for (const PlannedSequence& p : in_flight_->plan) still_running.insert(p.sequence->id);
  }
  Apply(done.plan, *results, std::vector<absl::Status>(done.plan.size()), on_update, still_running);
  if (!in_flight_) ReleaseRemoved();
  return absl::OkStatus();
}

absl::Status Engine::RunNow(const std::vector<PlannedSequence>& plan, std::vector<StepRow> rows,
                            const UpdateFn& on_update) {
  std::vector<absl::Status> errors;
  auto results = Execute(rows, &errors);
  if (!results.ok() && absl::IsFailedPrecondition(results.status())) {
    // The executor lost a penalized sequence's history (it keeps a bounded number) and ran nothing: once more,
    // with every penalized row's history in full.
    ++history_resends_;
    for (size_t i = 0; i < plan.size(); ++i) rows[i] = RowFor(plan[i], /*full_history=*/true);
    results = Execute(rows, &errors);
  }
  RETURN_IF_ERROR(results.status());
  for (const PlannedSequence& p : plan) p.sequence->history_sent = true;
  Apply(plan, *results, errors, on_update, {});
  return absl::OkStatus();
}

bool Engine::CanContinue(const std::vector<PlannedSequence>& plan) {
  // Only the steady state of decoding is overlapped: every running sequence decodes one token, nothing waits to
  // be admitted, and no sequence needs what the router alone knows (its history for penalties) or will end
  // by length. Anything else runs one step at a time, as it comes.
  if (!overlap_ || !executor_->CanStart() || scheduler_.queued() > 0 ||
      static_cast<int>(plan.size()) != scheduler_.running()) {
    return false;
  }
  for (const PlannedSequence& p : plan) {
    const ScheduledSequence& s = *p.sequence;
    // A constrained sequence's next mask depends on the token still being drawn.
    if (!p.sample || p.count != 1 || p.start < s.prompt_len || s.spec.score || s.spec.sampling.has_penalties() ||
        Constrains(s.spec.constraint.get()) || s.spec.beams.num_beams > 0 ||
        s.generated() + 1 >= s.spec.max_new_tokens || removed_.contains(s.id) || finished_early_.contains(s.id)) {
      return false;
    }
  }
  // Room for one more position each (blocks taken now stay with their sequences if this fails part way).
  for (const PlannedSequence& p : plan) {
    if (!scheduler_.Reserve(*p.sequence, p.start + p.count + 1)) return false;
  }
  return true;
}

void Engine::Apply(const std::vector<PlannedSequence>& plan, const std::vector<RowResult>& results,
                   const std::vector<absl::Status>& errors, const UpdateFn& on_update,
                   const absl::flat_hash_set<uint64_t>& still_running) {
  int step_tokens = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    const PlannedSequence& p = plan[i];
    if (!errors[i].ok()) continue;
    prefilled_tokens_ += std::max(0, std::min(p.start + p.count, p.sequence->prompt_len) - p.start);
    step_tokens += p.count;
  }
  // Bounded: a caller that never takes them (no metrics) must not grow it forever.
  if (step_tokens_.size() >= 1024) step_tokens_.erase(step_tokens_.begin());
  step_tokens_.push_back(step_tokens);
  std::vector<uint64_t> finished;
  for (size_t i = 0; i < plan.size(); ++i) {
    const PlannedSequence& p = plan[i];
    const RowResult& r = results[i];
    ScheduledSequence& s = *p.sequence;
    if (removed_.contains(s.id) || finished_early_.contains(s.id)) {
      // Removed by the caller, or finished, while this step ran: nobody hears of it.
      if (!still_running.contains(s.id)) finished.push_back(s.id);
      continue;
    }
    absl::Status error = errors[i];
    if (error.ok()) error = NonFiniteLogits(s, p, r);
    if (auto g = beam_of_.find(s.id); g != beam_of_.end()) {
      ApplyBeamRow(g->second, p, r, error, on_update, &finished);
      continue;
    }
    if (s.id >= kFirstOwnId) continue;  // a beam of a group that ended in this step: on its way out
    SequenceUpdate u;
    u.id = s.id;
    u.result = &r;
    if (!error.ok()) {
      u.finish = FinishReason::kFailed;
      u.error = error;
    } else if (s.spec.score) {
      // Row i scores position start + i + 1.
      const int from = std::max(s.scored + 1, p.start + 1);
      // Given targets score the last prompt position too.
      const int to = std::min(p.start + p.count + 1, s.prompt_len + (s.spec.score_targets.empty() ? 0 : 1));
      if (r.score_logprobs.size() != static_cast<size_t>(p.count)) {
        u.finish = FinishReason::kFailed;
        u.error = absl::InternalError(absl::StrCat("sequence ", s.id, ": ", r.score_logprobs.size(),
                                                   " scores came back for ", p.count, " positions"));
      } else if (to > from) {
        u.scores = std::span<const float>(r.score_logprobs).subspan(from - p.start - 1, to - from);
        if (r.score_top_logprobs.size() == r.score_logprobs.size()) {
          u.score_top_logprobs =
              std::span<const std::vector<TokenLogprob>>(r.score_top_logprobs).subspan(from - p.start - 1, to - from);
        }
        if (r.score_top_logits.size() == r.score_logprobs.size()) {
          u.score_top_logits =
              std::span<const std::vector<TokenLogprob>>(r.score_top_logits).subspan(from - p.start - 1, to - from);
        }
        if (const size_t vocab = r.score_logits.size() / p.count; vocab > 0 && vocab * p.count == r.score_logits.size()) {
          u.score_logits = std::span<const float>(r.score_logits).subspan((from - p.start - 1) * vocab, (to - from) * vocab);
        }
        u.score_from = from;
        s.scored = to - 1;
      }
      scheduler_.Advance(p, -1);
      if (u.finish == FinishReason::kNone && s.computed >= s.prompt_len) u.finish = FinishReason::kScored;
    } else if (p.sample && (!r.sampled || r.token < 0)) {
      // Nothing left to compute and no token: it would never be planned again.
      u.finish = FinishReason::kFailed;
      u.error = absl::InternalError(absl::StrCat("sequence ", s.id, ": the step drew no token"));
    } else if (absl::Status accepted = r.sampled && Constrains(s.spec.constraint.get())
                                           ? s.spec.constraint->Accept(r.token)
                                           : absl::OkStatus();
               !accepted.ok()) {
      u.finish = FinishReason::kFailed;
      u.error = absl::InternalError(absl::StrCat("sequence ", s.id, ": ", accepted.message()));
    } else {
      scheduler_.Advance(p, r.sampled ? r.token : -1);
      if (s.computed >= s.prompt_len) ReleaseForks(s);
      if (!r.sampled) continue;
      if (std::find(s.spec.stop_ids.begin(), s.spec.stop_ids.end(), r.token) != s.spec.stop_ids.end()) {
        u.finish = FinishReason::kStopToken;
      } else if (s.generated() >= s.spec.max_new_tokens) {
        u.finish = FinishReason::kLength;
      }
    }
    const bool stop = on_update(u);
    if (stop || u.finish != FinishReason::kNone) {
      // A step still in flight runs it once more: its blocks stay until that step has answered.
      if (still_running.contains(s.id)) {
        finished_early_.insert(s.id);
      } else {
        finished.push_back(s.id);
      }
    }
  }
  for (uint64_t id : finished) {
    Drop(id);
    removed_.erase(id);
    finished_early_.erase(id);
  }
}

void Engine::ApplyBeamRow(uint64_t group, const PlannedSequence& p, const RowResult& r, const absl::Status& error,
                          const UpdateFn& on_update, std::vector<uint64_t>* drop) {
  BeamGroup& g = groups_.at(group);
  ScheduledSequence& s = *p.sequence;
  SequenceUpdate u;
  u.id = group;
  if (!error.ok() || (p.sample && (!r.sampled || r.token < 0))) {
    u.finish = FinishReason::kFailed;
    u.error = !error.ok() ? error : absl::InternalError(absl::StrCat("beam ", s.id, ": the step drew no token"));
    on_update(u);
    EndGroup(group, drop);
    return;
  }
  scheduler_.Advance(p, -1);  // the beam's token is chosen with its siblings'
  if (!p.sample) return;      // a prompt chunk
  auto& c = g.candidates[s.id];
  c = r.top_logprobs;
  if (c.empty()) c.push_back({r.token, r.logprob});
  s.held = true;
  if (g.candidates.size() < g.live.size()) return;
  if (!SelectBeams(g, drop)) return;
  std::sort(g.finished.begin(), g.finished.end(), [](const Beam& a, const Beam& b) { return a.score > b.score; });
  if (static_cast<int>(g.finished.size()) > g.spec.beams.num_beams) g.finished.resize(g.spec.beams.num_beams);
  u.beams = g.finished;
  u.finish = g.finished.empty() ? FinishReason::kLength : g.finished[0].finish;
  on_update(u);
  EndGroup(group, drop);
}

bool Engine::SelectBeams(BeamGroup& g, std::vector<uint64_t>* drop) {
  const BeamSearchParams& params = g.spec.beams;
  const int beams = params.num_beams;
  struct Candidate {
    double sum;
    int beam;
    TokenLogprob token;
  };
  std::vector<Candidate> candidates;
  for (int b = 0; b < static_cast<int>(g.live.size()); ++b) {
    for (const TokenLogprob& t : g.candidates.at(g.live[b].sequence)) {
      candidates.push_back({g.live[b].sum_logprob + t.logprob, b, t});
    }
  }
  g.candidates.clear();
  std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
    if (a.sum != b.sum) return a.sum > b.sum;
    if (a.beam != b.beam) return a.beam < b.beam;
    return a.token.token < b.token.token;
  });
  ++g.generated;
  auto beam_tokens = [&](int b) {
    const ScheduledSequence& s = *scheduler_.Find(g.live[b].sequence);
    return std::vector<int32_t>(s.tokens.begin() + s.prompt_len, s.tokens.end());
  };
  auto finish = [&](const Candidate& c, FinishReason why) {
    Beam h;
    h.tokens = beam_tokens(c.beam);
    h.tokens.push_back(c.token.token);
    h.logprobs = g.live[c.beam].logprobs;
    h.logprobs.push_back(c.token.logprob);
    h.sum_logprob = c.sum;
    h.score = c.sum / std::pow(static_cast<double>(h.tokens.size()), params.length_penalty);
    h.finish = why;
    g.finished.push_back(std::move(h));
  };
  const std::vector<int32_t>& stops = g.spec.stop_ids;
  std::vector<Candidate> next;
  for (size_t rank = 0; rank < candidates.size(); ++rank) {
    const Candidate& c = candidates[rank];
    if (std::find(stops.begin(), stops.end(), c.token.token) != stops.end()) {
      // A stop among the best num_beams candidates ends a hypothesis. A lower one does too (vLLM), so that the
      // exact stopping rule never loses the best output, except with early stopping (Hugging Face), which would
      // otherwise fill its num_beams hypotheses with poor ones and stop; one beam is then greedy.
      if (static_cast<int>(rank) < beams || !params.early_stopping) finish(c, FinishReason::kStopToken);
    } else if (static_cast<int>(next.size()) < beams) {
      next.push_back(c);
    }
  }
  if (g.generated >= g.spec.max_new_tokens) {
    for (const Candidate& c : next) finish(c, FinishReason::kLength);
    next.clear();
  }
  bool done = next.empty();
  if (!done && static_cast<int>(g.finished.size()) >= beams) {
    if (params.early_stopping) {
      done = true;
    } else {
      // The best a live beam can still score: its sum only falls, and the length it may end at that divides it
      // most favourably is the longest (length_penalty > 0) or the shortest (< 0).
      std::vector<double> scores;
      for (const Beam& h : g.finished) scores.push_back(h.score);
      std::nth_element(scores.begin(), scores.begin() + (beams - 1), scores.end(), std::greater<double>());
      const double worst_kept = scores[beams - 1];
      const int32_t length = params.length_penalty > 0 ? g.spec.max_new_tokens : g.generated + 1;
      const double bound = next[0].sum / std::pow(static_cast<double>(length), params.length_penalty);
      done = bound <= worst_kept;
    }
  }
  if (done) return true;
  // The chosen continuations: a beam's first goes on in its own sequence, the others fork from it, and a beam
  // with none ends.
  std::vector<int> first(g.live.size(), -1);  // the candidate that goes on in each beam's own sequence
  for (size_t k = 0; k < next.size(); ++k) {
    if (first[next[k].beam] < 0) first[next[k].beam] = static_cast<int>(k);
  }
  std::vector<BeamGroup::Live> live(next.size());
  // Forks first, so that they copy their parent's tokens before its own continuation is appended.
  for (size_t k = 0; k < next.size(); ++k) {
    const Candidate& c = next[k];
    if (first[c.beam] == static_cast<int>(k)) continue;
    const BeamGroup::Live& parent = g.live[c.beam];
    const uint64_t id = next_own_id_++;
    const ScheduledSequence& from = *scheduler_.Find(parent.sequence);
    auto child = std::make_unique<ScheduledSequence>();
    child->id = id;
    child->spec = from.spec;
    child->tokens = from.tokens;
    child->tokens.push_back(c.token.token);
    child->prompt_len = from.prompt_len;
    scheduler_.Fork(from, std::move(child));
    beam_of_[id] = beam_of_.at(parent.sequence);
    live[k] = {id, c.sum, parent.logprobs};
    live[k].logprobs.push_back(c.token.logprob);
  }
  for (size_t b = 0; b < g.live.size(); ++b) {
    BeamGroup::Live& parent = g.live[b];
    if (first[b] < 0) {
      beam_of_.erase(parent.sequence);
      drop->push_back(parent.sequence);
      continue;
    }
    const Candidate& c = next[first[b]];
    ScheduledSequence& s = *scheduler_.Find(parent.sequence);
    s.tokens.push_back(c.token.token);
    s.held = false;
    parent.sum_logprob = c.sum;
    parent.logprobs.push_back(c.token.logprob);
    live[first[b]] = std::move(parent);
  }
  g.live = std::move(live);
  return false;
}

void Engine::EndGroup(uint64_t group, std::vector<uint64_t>* drop) {
  auto g = groups_.find(group);
  if (g == groups_.end()) return;
  for (const auto& l : g->second.live) {
    beam_of_.erase(l.sequence);
    drop->push_back(l.sequence);
  }
  groups_.erase(g);
}

void Engine::Drop(uint64_t id) {
  if (ScheduledSequence* s = scheduler_.Find(id)) ReleaseForks(*s);  // they go on without it
  auto gone = scheduler_.Remove(id);
  if (gone != nullptr) Released(gone.get());
}

void Engine::ReleaseRemoved() {
  for (uint64_t id : removed_) Drop(id);
  for (uint64_t id : finished_early_) Drop(id);
  removed_.clear();
  finished_early_.clear();
}

// The executor's answer, checked: one result per planned sequence, in the plan's order.
absl::StatusOr<std::vector<RowResult>> Engine::CheckResults(std::span<const uint64_t> planned,
                                                            absl::StatusOr<std::vector<RowResult>> results) {
  RETURN_IF_ERROR(results.status());
  if (results->size() != planned.size()) {
    return absl::InternalError(absl::StrCat("the step planned ", planned.size(), " sequences but ", results->size(),
                                            " results came back"));
  }
  for (size_t i = 0; i < planned.size(); ++i) {
    if ((*results)[i].sequence_id != planned[i]) {
      return absl::InternalError(absl::StrCat("result ", i, " is for sequence ", (*results)[i].sequence_id,
                                              ", planned was ", planned[i]));
    }
  }
  return results;
}

absl::StatusOr<std::vector<RowResult>> Engine::Execute(const std::vector<StepRow>& rows,
                                                       std::vector<absl::Status>* errors) {
  errors->assign(rows.size(), absl::OkStatus());
  std::vector<uint64_t> ids;
  for (const StepRow& r : rows) ids.push_back(r.sequence_id);
  auto checked = [&](absl::StatusOr<std::vector<RowResult>> results, size_t first, size_t count) {
    return CheckResults(std::span<const uint64_t>(ids).subspan(first, count), std::move(results));
  };
  auto all = checked(executor_->Execute(rows), 0, rows.size());
  if (all.ok() || !absl::IsInvalidArgument(all.status()) || rows.size() == 1) {
    if (!all.ok() && absl::IsInvalidArgument(all.status())) {
      (*errors)[0] = all.status();
      std::vector<RowResult> none(1);
      none[0].sequence_id = rows[0].sequence_id;
      return none;
    }
    return all;
  }
  // Nothing ran: find the malformed rows one at a time, and run the rest (a row alone computes what it would in the
  // batch; a GPU's fastest kernels may differ in the last bits of its logits).
  std::vector<RowResult> out(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    auto one = checked(executor_->Execute(std::span<const StepRow>(&rows[i], 1)), i, 1);
    if (one.ok()) {
      out[i] = std::move((*one)[0]);
    } else if (absl::IsInvalidArgument(one.status())) {
      (*errors)[i] = one.status();
      out[i].sequence_id = rows[i].sequence_id;
    } else {
      return one.status();
    }
  }
  return out;
}

}  // namespace gemma
