#include "router/openai/openai_response.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "tokenizer/utf8.h"

namespace gemma::openai {
namespace {

using nlohmann::json;

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string Event(const json& j) { return "data: " + Dump(j) + "\n\n"; }

// The token's own bytes; null for a special token or without a vocabulary.
const std::string* OwnBytes(const ResponseContext& c, int32_t id) {
  return c.vocabulary != nullptr && id >= 0 && id < c.vocabulary->size() ? c.vocabulary->bytes(id) : nullptr;
}

// A token as OpenAI lists it: its own bytes (" the", with the space its piece carries); a byte that is not UTF-8 on
// its own as "bytes:\\xNN", as OpenAI writes them; special tokens as decoded alone ("").
std::string TokenText(const ResponseContext& c, int32_t id) {
  const std::string* bytes = OwnBytes(c, id);
  if (bytes == nullptr) {
    auto t = c.tokenizer->Decode(std::vector<int32_t>{id});
    return t.ok() ? *t : "";
  }
  if (IsValidUtf8(*bytes)) return *bytes;
  std::string escaped = "bytes:";
  for (unsigned char b : *bytes) escaped += absl::StrFormat("\\x%02x", b);
  return escaped;
}

// The bytes OpenAI's chat logprobs list: the token's own when known.
std::string TokenBytes(const ResponseContext& c, int32_t id, const std::string& text) {
  const std::string* bytes = OwnBytes(c, id);
  return bytes != nullptr ? *bytes : text;
}

json Bytes(const std::string& s) {
  json b = json::array();
  for (unsigned char ch : s) b.push_back(static_cast<int>(ch));
  return b;
}

// Chat: {"content": [{token, logprob, bytes, top_logprobs: [...]}, ...]}.
json ChatLogprobs(const ResponseContext& c, const std::vector<v1::GeneratedToken>& tokens) {
  json content = json::array();
  for (const auto& t : tokens) {
    const std::string text = TokenText(c, t.id());
    json top = json::array();
    for (const auto& alt : t.top_logprobs()) {
      const std::string alt_text = TokenText(c, alt.id());
      top.push_back({{"token", alt_text}, {"logprob", alt.logprob()}, {"bytes", Bytes(TokenBytes(c, alt.id(), alt_text))}});
    }
    content.push_back(
        {{"token", text}, {"logprob", t.logprob()}, {"bytes", Bytes(TokenBytes(c, t.id(), text))}, {"top_logprobs", top}});
  }
  return {{"content", content}};
}

// A token's top_logprobs entry for the completions API: its alternatives and, as OpenAI's legacy API promises ("up
// to logprobs+1 elements"), the token itself, so that logprobs 0 still gives each token's own entry.
json CompletionTop(const ResponseContext& c, const google::protobuf::RepeatedPtrField<v1::TokenLogprob>& alternatives,
                   int32_t id, float logprob) {
  json top = json::object();
  for (const auto& alt : alternatives) top[TokenText(c, alt.id())] = alt.logprob();
  top[TokenText(c, id)] = logprob;
  return top;
}

// Completions: {"tokens", "token_logprobs", "top_logprobs", "text_offset"}; offsets are characters (code points, as
// OpenAI's and vLLM's Python strings count them) and count from `offset`. With
// `prompt`, every prompt token comes first (echo), each with its log-prob given the tokens before it; the first has
// none (null), as OpenAI and vLLM give it, so positions line up with the prompt's ids.
json CompletionLogprobs(const ResponseContext& c, const std::vector<v1::GeneratedToken>& tokens, int64_t offset,
                        const v1::ScoreResponse* prompt = nullptr) {
  json texts = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
  if (prompt != nullptr) {
    int64_t at = 0;
    for (int t = 0; t < prompt->token_ids_size(); ++t) {
      const std::string text = TokenText(c, prompt->token_ids(t));
      texts.push_back(text);
      const bool scored = t > 0 && t - 1 < prompt->logprobs_size();
      lps.push_back(scored ? json(prompt->logprobs(t - 1)) : json(nullptr));
      const bool has_top = scored && t - 1 < prompt->top_logprobs_size();
      const v1::TopLogprobs& top = has_top ? prompt->top_logprobs(t - 1) : v1::TopLogprobs::default_instance();
      tops.push_back(scored ? CompletionTop(c, top.alternatives(), prompt->token_ids(t), prompt->logprobs(t - 1))
                            : json(nullptr));
      offsets.push_back(at);
      at += Utf8Characters(TokenBytes(c, prompt->token_ids(t), text));
    }
  }
  for (const auto& t : tokens) {
    const std::string text = TokenText(c, t.id());
    texts.push_back(text);
    lps.push_back(t.logprob());
    tops.push_back(CompletionTop(c, t.top_logprobs(), t.id(), t.logprob()));
    offsets.push_back(offset);
    offset += Utf8Characters(TokenBytes(c, t.id(), text));
  }
  return {{"tokens", texts}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

json Head(const ResponseContext& c, bool chunk) {
  const char* object = c.chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
  return {{"id", c.id}, {"object", object}, {"created", c.created}, {"model", c.model}};
}

json Usage(const UsageCount& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

}  // namespace

const char* FinishReasonName(v1::FinishReason reason) {
  return reason == v1::FINISH_REASON_LENGTH ? "length" : "stop";
}

std::string ResponseBody(const ResponseContext& c, const std::vector<v1::GenerateResponse>& results,
                         const std::vector<std::string>& echoed, int choices_per_prompt, const UsageCount& usage,
                         const std::vector<const v1::ScoreResponse*>& prompt_scores) {
  static const std::string kNone;
  json choices = json::array();
  for (size_t i = 0; i < results.size(); ++i) {
    const v1::GenerateResponse& r = results[i];
    const size_t prompt = i / static_cast<size_t>(std::max(choices_per_prompt, 1));
    const std::string& prefix = prompt < echoed.size() ? echoed[prompt] : kNone;
    const std::vector<v1::GeneratedToken> tokens(r.tokens().begin(), r.tokens().end());
    json choice = {{"index", i}, {"finish_reason", FinishReasonName(r.finish_reason())}};
    if (c.chat) {
      choice["message"] = {{"role", "assistant"}, {"content", r.text()}};
      choice["logprobs"] = c.logprobs ? ChatLogprobs(c, tokens) : json(nullptr);
    } else {
      choice["text"] = prefix + r.text();
      const v1::ScoreResponse* scored = i < prompt_scores.size() ? prompt_scores[i] : nullptr;
      choice["logprobs"] = c.logprobs ? CompletionLogprobs(c, tokens, Utf8Characters(prefix), scored) : json(nullptr);
    }
    choices.push_back(std::move(choice));
  }
  json body = Head(c, false);
  body["choices"] = std::move(choices);
  body["usage"] = Usage(usage);
  return Dump(body);
}

int64_t TokenCharacters(const ResponseContext& c, int32_t id) {
  return Utf8Characters(TokenBytes(c, id, TokenText(c, id)));
}

std::string TextChunk(const ResponseContext& c, int index, std::string_view text,
                      const std::vector<v1::GeneratedToken>& tokens, int64_t text_offset) {
  json choice = {{"index", index}, {"finish_reason", nullptr}};
  if (c.chat) {
    choice["delta"] = {{"content", std::string(text)}};
    choice["logprobs"] = c.logprobs ? ChatLogprobs(c, tokens) : json(nullptr);
  } else {
    choice["text"] = std::string(text);
    choice["logprobs"] = c.logprobs ? CompletionLogprobs(c, tokens, text_offset) : json(nullptr);
  }
  json body = Head(c, true);
  body["choices"] = json::array({choice});
  return Event(body);
}

std::string RoleChunk(const ResponseContext& c, int index) {
  json body = Head(c, true);
  body["choices"] = json::array(
      {{{"index", index}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr}, {"finish_reason", nullptr}}});
  return Event(body);
}

std::string FinishChunk(const ResponseContext& c, int index, v1::FinishReason reason) {
  json choice = {{"index", index}, {"logprobs", nullptr}, {"finish_reason", FinishReasonName(reason)}};
  if (c.chat) {
    choice["delta"] = json::object();
  } else {
    choice["text"] = "";
  }
  json body = Head(c, true);
  body["choices"] = json::array({choice});
  return Event(body);
}

std::string UsageChunk(const ResponseContext& c, const UsageCount& usage) {
  json body = Head(c, true);
  body["choices"] = json::array();
  body["usage"] = Usage(usage);
  return Event(body);
}

std::string ErrorChunk(const std::string& error_json) { return "data: " + error_json + "\n\n"; }

double CumulativeLogprob(const v1::GenerateResponse& r) {
  double sum = 0;
  for (const v1::GeneratedToken& t : r.tokens()) sum += t.logprob();
  return sum;
}

std::vector<v1::GenerateResponse> BestBeams(const std::vector<v1::GenerateResponse>& searches, int n) {
  std::vector<v1::GenerateResponse> out;
  for (const v1::GenerateResponse& search : searches) {
    for (int b = 0; b < n && b < search.completions_size(); ++b) {
      const v1::Completion& c = search.completions(b);
      v1::GenerateResponse r;
      r.set_text(c.text());
      *r.mutable_tokens() = c.tokens();
      r.set_finish_reason(c.finish_reason());
      *r.mutable_usage() = c.usage();
      r.set_seed(c.seed());
      out.push_back(std::move(r));
    }
  }
  return out;
}

std::vector<v1::GenerateResponse> BestOf(std::vector<v1::GenerateResponse> candidates, int best_of, int n) {
  if (best_of == n) return candidates;
  std::vector<v1::GenerateResponse> out;
  for (size_t start = 0; start + best_of <= candidates.size(); start += best_of) {
    std::vector<size_t> order(best_of);
    std::vector<double> sums(best_of);
    for (int k = 0; k < best_of; ++k) {
      order[k] = k;
      sums[k] = CumulativeLogprob(candidates[start + k]);
    }
    // Stable: equal sums keep the order of the candidates' seeds.
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return sums[a] > sums[b]; });
    for (int k = 0; k < n; ++k) out.push_back(std::move(candidates[start + order[k]]));
  }
  return out;
}

}  // namespace gemma::openai
