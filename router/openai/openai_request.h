// OpenAI's /v1/completions and /v1/chat/completions request bodies, read into the cluster's own GenerateRequest.
// Every field is checked here, with OpenAI's name, before the router's own validation: a bad or unsupported field
// gets 400 naming it, and a field this server does not implement is never silently ignored.
#pragma once

#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "gemma/v1/gemma.pb.h"
#include "router/request_validation.h"
#include "router/openai/openai_error.h"

namespace gemma::openai {

// What the served model allows, for the checks that depend on it.
struct RequestContext {
  bool chat_system_role = false;  // the chat template takes a system message (Gemma 3)
  int max_stop_sequences = 8;
  int max_top_logprobs = 20;
  int max_n = kMaxSamples;  // choices of one request (prompts x n)
  int max_new_tokens = 4096;  // the router's ceiling on max_tokens
  int vocab_size = 0;         // token ids in a prompt are below it; 0: unknown (checked by the router)
};

struct ParsedRequest {
  bool chat = false;
  std::string model;
  // One request per prompt (a completion may list several); choice c of prompt p has index p * n + c.
  std::vector<v1::GenerateRequest> prompts;
  int n = 1;
  // Completions' best_of: candidates drawn per prompt (>= n), of which the n with the highest cumulative log-prob
  // are returned; equal to n when not given.
  int best_of = 1;
  // vLLM's use_beam_search: the beam width (best_of, or n), of which the n best beams are the choices; 0: sampling.
  int beams = 0;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool echo = false;           // completions: the prompt's text (and with logprobs, its log-probs) first
  bool logprobs = false;       // return each token's log-prob
  int top_logprobs = 0;
  // The field the client bounded its output with (chat takes either name), for the errors that speak of it.
  const char* max_tokens_field = "max_tokens";
  // Completions without max_tokens: OpenAI's default (16) was used, which errors about it then say.
  bool max_tokens_defaulted = false;
  // False for completions with echo and max_tokens 0: the prompt alone, nothing generated.
  bool generate = true;
  bool generates() const { return generate; }
  // Total choices: prompts × n.
  int choices() const { return static_cast<int>(prompts.size()) * n; }
  // The prompt choice `choice` answers: choices come n to a prompt, in the prompts' order.
  int PromptOf(int choice) const { return choice / n; }
  // Total candidates generated: prompts × best_of.
  int candidates() const { return static_cast<int>(prompts.size()) * best_of; }
};

using ParseResult = std::variant<ParsedRequest, ApiError>;

ParseResult ParseCompletionRequest(const nlohmann::json& body, const RequestContext& context);
ParseResult ParseChatRequest(const nlohmann::json& body, const RequestContext& context);

}  // namespace gemma::openai
