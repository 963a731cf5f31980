// Runs a batch of sequences to completion on one engine: what the gemma command and the tests use in process.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/engine.h"

namespace gemma {

struct CompletedSequence {
  std::vector<int32_t> tokens;          // generated, a stop token included
  std::vector<float> token_logprobs;    // of each generated token
  std::vector<float> prompt_logprobs;   // scoring: of prompt tokens 1.., each given the tokens before it
  // Scoring with score_logits: per scored position, its largest logits (`logprob` holds the logit) or its whole
  // row (logits: [positions, vocab]).
  std::vector<std::vector<TokenLogprob>> top_logits;
  std::vector<float> logits;
  FinishReason finish = FinishReason::kNone;
  // One per SequenceSpec::activations point: [activation_positions,
  // hidden_size], f32, in position order (after a preemption, those of the last
  // pass). Delivered with scoring rows and sampled rows only (the engine
  // reports no other prompt chunk), so a sequence that reads activations should
  // score.
  std::vector<std::vector<float>> activations;
  std::vector<Beam> beams;  // a beam search's, best first (`tokens` and `token_logprobs` are the best one's)
};

// Adds every spec (ids are their indices), steps until all are done, and returns them in order. `on_token`, if
// set, hears each sampled token as it comes: (spec index, result). The engine must be idle when called.
using TokenFn = std::function<void(int, const RowResult&)>;
absl::StatusOr<std::vector<CompletedSequence>> RunBatch(Engine& engine, std::vector<SequenceSpec> specs,
                                                        const TokenFn& on_token = nullptr);

// The name a finish reason has in the gemma command's JSON ("length", "stop", "scored").
const char* FinishReasonName(FinishReason reason);

}  // namespace gemma
