// OpenAI's response bodies and server-sent-event chunks, from the cluster's own results.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gemma/v1/gemma.pb.h"
#include "structured/vocabulary.h"
#include "tokenizer/tokenizer.h"

namespace gemma::openai {

// What every body and chunk of one response shares.
struct ResponseContext {
  std::string id;  // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;
  std::string model;
  bool chat = false;
  bool logprobs = false;
  const Tokenizer* tokenizer = nullptr;
  // Each token's own bytes; null: tokens are shown as decoded alone.
  std::shared_ptr<const structured::Vocabulary> vocabulary;
};

struct UsageCount {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// "stop" for <eos>, <end_of_turn>, a stop sequence or stop id; "length" for max_tokens or the context.
const char* FinishReasonName(v1::FinishReason reason);

// A whole (non-streamed) response: one choice per result, in index order, `choices_per_prompt` to a prompt.
// `echoed[p]`, when given, goes before the text of prompt p's choices (echo); `prompt_scores[i]`, when given and
// not null, lists choice i's prompt tokens (<bos> included, as "" text) before the generated ones, each with its
// log-prob given the tokens before it (null for the first).
std::string ResponseBody(const ResponseContext& context, const std::vector<v1::GenerateResponse>& results,
                         const std::vector<std::string>& echoed, int choices_per_prompt, const UsageCount& usage,
                         const std::vector<const v1::ScoreResponse*>& prompt_scores = {});

// One server-sent event for choice `index`: new text and its tokens' log-probs, or the choice's end.
// `role_only`: a chat stream's opening chunk (delta {"role": "assistant", "content": ""}).
// `text_offset`: where `tokens` start in the choice's whole text, in characters (completions' logprobs.text_offset).
std::string TextChunk(const ResponseContext& context, int index, std::string_view text,
                      const std::vector<v1::GeneratedToken>& tokens, int64_t text_offset = 0);
// The characters a token adds to text_offset: its own bytes' (a piece of a character split across byte tokens adds
// it where the character starts). Streams and whole bodies count alike, whatever a stop string held back.
int64_t TokenCharacters(const ResponseContext& context, int32_t id);
std::string RoleChunk(const ResponseContext& context, int index);
std::string FinishChunk(const ResponseContext& context, int index, v1::FinishReason reason);
// The last chunk when stream_options.include_usage: no choices, the usage.
std::string UsageChunk(const ResponseContext& context, const UsageCount& usage);
// An error inside a stream already started (its HTTP status was 200).
std::string ErrorChunk(const std::string& error_json);
// The sum of a result's token log-probs (the stop token's included): what best_of ranks candidates by.
double CumulativeLogprob(const v1::GenerateResponse& r);
// best_of: of each prompt's `best_of` consecutive candidates, the `n` with the highest cumulative log-prob, best
// first (ties in candidate order). The candidates as they are when best_of == n.
std::vector<v1::GenerateResponse> BestOf(std::vector<v1::GenerateResponse> candidates, int best_of, int n);
// use_beam_search: each prompt's search answer (its beams best first, in `completions`) as its n best choices.
std::vector<v1::GenerateResponse> BestBeams(const std::vector<v1::GenerateResponse>& searches, int n);
inline constexpr std::string_view kDoneChunk = "data: [DONE]\n\n";

}  // namespace gemma::openai
