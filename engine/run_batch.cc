#include "engine/run_batch.h"

#include <cstddef>

#include "absl/strings/str_cat.h"

namespace gemma {
namespace {

// Appends a row's activations; counts the positions they hold in *rows.
void AddActivations(const RowResult& r, CompletedSequence* c, size_t* rows) {
  if (r.activations.size() != c->activations.size() || r.activation_rows == 0) {
    return;
  }
  for (size_t j = 0; j < r.activations.size(); ++j) {
    c->activations[j].insert(c->activations[j].end(), r.activations[j].begin(),
                             r.activations[j].end());
  }
  *rows += static_cast<size_t>(r.activation_rows);
}

// A preempted sequence is computed again from position 0, so its last pass
// delivered every position once, in order: the last `wanted` rows are the
// reads.
void KeepLastPass(size_t wanted, size_t rows, CompletedSequence* c) {
  if (rows <= wanted) return;
  for (std::vector<float>& all : c->activations) {
    const size_t width = all.size() / rows;
    all.erase(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(
                                             (rows - wanted) * width));
  }
}

}  // namespace

absl::StatusOr<std::vector<CompletedSequence>> RunBatch(Engine& engine, std::vector<SequenceSpec> specs,
                                                        const TokenFn& on_token) {
  if (!engine.idle()) return absl::FailedPreconditionError("the engine is already running sequences");
  std::vector<CompletedSequence> done(specs.size());
  std::vector<size_t> wanted_rows(specs.size()), read_rows(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    wanted_rows[i] = specs[i].activation_positions.size();
    done[i].activations.resize(specs[i].activations.size());
  }
  absl::Status failed;
  for (size_t i = 0; i < specs.size(); ++i) {
    if (auto s = engine.Add(i, std::move(specs[i])); !s.ok()) {
      engine.RemoveAll();
      return absl::Status(s.code(), absl::StrCat("request ", i, ": ", s.message()));
    }
  }
  while (!engine.idle()) {
    const absl::Status s = engine.Step([&](const SequenceUpdate& u) {
      CompletedSequence& c = done[u.id];
      c.prompt_logprobs.insert(c.prompt_logprobs.end(), u.scores.begin(), u.scores.end());
      AddActivations(*u.result, &c, &read_rows[u.id]);
      if (u.result->sampled) {
        c.tokens.push_back(u.result->token);
        c.token_logprobs.push_back(u.result->logprob);
        if (on_token) on_token(static_cast<int>(u.id), *u.result);
      }
      c.finish = u.finish;
      if (u.finish == FinishReason::kFailed && failed.ok()) {
        failed = absl::Status(u.error.code(), absl::StrCat("request ", u.id, ": ", u.error.message()));
      }
      return false;
    });
    if (s.ok() && !failed.ok()) {
      engine.RemoveAll();
      return failed;
    }
    if (!s.ok()) {
      engine.RemoveAll();
      return s;
    }
  }
  for (size_t i = 0; i < done.size(); ++i) {
    KeepLastPass(wanted_rows[i], read_rows[i], &done[i]);
  }
  return done;
}

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength: return "length";
    case FinishReason::kStopToken: return "stop";
    case FinishReason::kScored: return "scored";
    case FinishReason::kFailed: return "failed";
    case FinishReason::kNone: break;
  }
  return "none";
}

}  // namespace gemma
