// Runs whole requests on one backend: chunked prefill and batched decode in shared steps, sampling, log-probs.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "shard/backend.h"
#include "shard/sampler.h"

namespace gemma {

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int max_new_tokens = 32;
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these
  bool prompt_logprobs = false;   // score the prompt: logprob of token t given tokens < t
};

struct GenerationResult {
  std::vector<int32_t> tokens;          // generated only
  std::vector<double> token_logprobs;   // of each generated token
  std::vector<double> prompt_logprobs;  // [prompt.size() - 1] when asked
  std::string finish_reason;            // "length" or "stop"
};

struct GeneratorOptions {
  int max_tokens_per_step = 512;  // token budget of one step (prefill chunks + decodes)
  int prefill_chunk = 512;        // most prompt tokens of one sequence per step
};

// Not thread-safe; uses the backend exclusively while Run executes.
class Generator {
 public:
  Generator(Backend* backend, GeneratorOptions options) : backend_(backend), options_(options) {}
  // Called after each sampled token: (request index, token id).
  using TokenCallback = std::function<void(int, int32_t)>;
  absl::StatusOr<std::vector<GenerationResult>> Run(std::span<const GenerationRequest> requests,
                                                    const TokenCallback& on_token = nullptr);

 private:
  Backend* backend_;
  GeneratorOptions options_;
};

}  // namespace gemma
