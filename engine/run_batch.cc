#include "engine/run_batch.h"

#include <cstddef>

#include "absl/strings/str_cat.h"
#include "engine/activation_collector.h"

namespace gemma {

absl::StatusOr<std::vector<CompletedSequence>> RunBatch(Engine& engine, std::vector<SequenceSpec> specs,
                                                        const TokenFn& on_token) {
  if (!engine.idle()) return absl::FailedPreconditionError("the engine is already running sequences");
  std::vector<CompletedSequence> done(specs.size());
  std::vector<ActivationCollector> activations;
  for (const SequenceSpec& spec : specs) {
    activations.emplace_back(spec.activations.size(), spec.activation_positions.size());
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
      c.top_logits.insert(c.top_logits.end(), u.score_top_logits.begin(), u.score_top_logits.end());
      c.logits.insert(c.logits.end(), u.score_logits.begin(), u.score_logits.end());
      c.finish = u.finish;
      if (u.finish == FinishReason::kFailed && failed.ok()) {
        failed = absl::Status(u.error.code(), absl::StrCat("request ", u.id, ": ", u.error.message()));
      }
      if (u.result == nullptr) {  // a beam search's answer
        c.beams.assign(u.beams.begin(), u.beams.end());
        if (!c.beams.empty()) {
          c.tokens = c.beams[0].tokens;
          c.token_logprobs = c.beams[0].logprobs;
        }
        return false;
      }
      if (absl::Status read = activations[u.id].Add(*u.result); !read.ok() && failed.ok()) {
        failed = absl::Status(read.code(), absl::StrCat("request ", u.id, ": ", read.message()));
      }
      if (u.result->sampled) {
        c.tokens.push_back(u.result->token);
        c.token_logprobs.push_back(u.result->logprob);
        if (on_token) on_token(static_cast<int>(u.id), *u.result);
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
  for (size_t i = 0; i < done.size(); ++i) done[i].activations = activations[i].Take();
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
