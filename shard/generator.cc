#include "shard/generator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "shard/kv_cache.h"

namespace gemma {
namespace {

struct Running {
  const GenerationRequest* request;
  std::vector<int32_t> tokens;  // prompt, then generated
  std::vector<int32_t> blocks;
  int computed = 0;  // positions already in the KV cache
  bool done = false;
};

}  // namespace

absl::StatusOr<std::vector<GenerationResult>> Generator::Run(std::span<const GenerationRequest> requests,
                                                             const TokenCallback& on_token) {
  const ModelConfig& c = backend_->config();
  if (options_.max_tokens_per_step <= 0 || options_.prefill_chunk <= 0) {
    return absl::InvalidArgumentError("max_tokens_per_step and prefill_chunk must be positive");
  }
  BlockAllocator allocator(backend_->num_kv_blocks());
  std::vector<Running> seqs;
  std::vector<GenerationResult> results(requests.size());
  seqs.reserve(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    const GenerationRequest& r = requests[i];
    if (r.prompt.empty()) return absl::InvalidArgumentError(absl::StrCat("request ", i, ": empty prompt"));
    if (r.max_new_tokens < 0) return absl::InvalidArgumentError(absl::StrCat("request ", i, ": max_new_tokens < 0"));
    if (auto s = ValidateSamplingParams(r.sampling); !s.ok()) return s;
    const int64_t total = static_cast<int64_t>(r.prompt.size()) + r.max_new_tokens;
    if (total > c.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("request ", i, ": prompt (", r.prompt.size(), ") + max_new_tokens (",
                                                     r.max_new_tokens, ") exceeds the context of ",
                                                     c.max_position_embeddings));
    }
    for (int32_t t : r.prompt) {
      if (t < 0 || t >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("request ", i, ": token id ", t, " is outside the vocabulary [0, ",
                                                       c.vocab_size, ")"));
      }
    }
    const int blocks_needed = static_cast<int>((total + backend_->kv_block_size() - 1) / backend_->kv_block_size());
    auto blocks = allocator.Allocate(blocks_needed);
    if (!blocks.ok()) return blocks.status();
    seqs.push_back(Running{&r, r.prompt, *std::move(blocks), 0, r.max_new_tokens == 0 && !r.prompt_logprobs});
    if (r.prompt_logprobs) results[i].prompt_logprobs.reserve(r.prompt.size());
  }

  StepLogits logits;
  std::vector<SequenceStep> step;
  std::vector<int> step_seq;
  while (true) {
    step.clear();
    step_seq.clear();
    int budget = options_.max_tokens_per_step;
    // Decodes first (one token each), then prompt chunks with what is left.
    for (int pass = 0; pass < 2 && budget > 0; ++pass) {
      for (size_t i = 0; i < seqs.size() && budget > 0; ++i) {
        Running& s = seqs[i];
        if (s.done) continue;
        const int pending = static_cast<int>(s.tokens.size()) - s.computed;
        const bool decoding = s.computed >= static_cast<int>(s.request->prompt.size());
        if ((pass == 0) != decoding || pending <= 0) continue;
        const int n = std::min({pending, budget, decoding ? 1 : options_.prefill_chunk});
        const bool finishes_prompt = s.computed + n == static_cast<int>(s.tokens.size());
        SequenceStep st;
        st.tokens = std::span<const int32_t>(s.tokens.data() + s.computed, n);
        st.start_pos = s.computed;
        st.block_table = s.blocks;
        st.logits = s.request->prompt_logprobs && !decoding ? LogitsWanted::kAll
                    : finishes_prompt                       ? LogitsWanted::kLast
                                                            : LogitsWanted::kNone;
        step.push_back(st);
        step_seq.push_back(static_cast<int>(i));
        budget -= n;
      }
    }
    if (step.empty()) break;
    if (auto st = backend_->Forward(step, &logits); !st.ok()) return st;

    for (size_t b = 0; b < step.size(); ++b) {
      const int i = step_seq[b];
      Running& s = seqs[i];
      GenerationResult& res = results[i];
      const int n = static_cast<int>(step[b].tokens.size());
      const int first_row = logits.row_begin[b];
      if (step[b].logits == LogitsWanted::kAll) {
        // Row j predicts position computed + j + 1.
        for (int j = 0; j < n; ++j) {
          const int next = s.computed + j + 1;
          if (next < static_cast<int>(s.request->prompt.size())) {
            res.prompt_logprobs.push_back(LogProbOf(logits.Row(first_row + j), c.vocab_size, s.tokens[next]));
          }
        }
      }
      s.computed += n;
      if (step[b].logits == LogitsWanted::kNone) continue;
      if (s.computed < static_cast<int>(s.tokens.size())) continue;  // prompt not finished yet
      if (static_cast<int>(res.tokens.size()) >= s.request->max_new_tokens) {
        s.done = true;
        res.finish_reason = "length";
        continue;
      }
      const float* row = logits.Row(first_row + (step[b].logits == LogitsWanted::kAll ? n - 1 : 0));
      int32_t token;
      if (s.request->sampling.has_penalties()) {  // on a copy: reported log-probs stay the model's own
        std::vector<float> penalized(row, row + c.vocab_size);
        ApplyPenalties(s.request->sampling, s.tokens.data(), s.tokens.size(), penalized.data(), c.vocab_size);
        token = SampleAt(s.request->sampling, s.computed, penalized.data(), c.vocab_size);
      } else {
        token = SampleAt(s.request->sampling, s.computed, row, c.vocab_size);
      }
      res.tokens.push_back(token);
      res.token_logprobs.push_back(LogProbOf(row, c.vocab_size, token));
      if (on_token) on_token(i, token);
      const bool stop = std::find(s.request->stop_ids.begin(), s.request->stop_ids.end(), token) !=
                        s.request->stop_ids.end();
      if (stop || static_cast<int>(res.tokens.size()) >= s.request->max_new_tokens) {
        s.done = true;
        res.finish_reason = stop ? "stop" : "length";
      } else {
        s.tokens.push_back(token);
      }
    }
  }
  for (size_t i = 0; i < seqs.size(); ++i) {
    allocator.Free(seqs[i].blocks);
    if (results[i].finish_reason.empty()) results[i].finish_reason = "length";
  }
  return results;
}

}  // namespace gemma
