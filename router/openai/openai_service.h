// The OpenAI-compatible HTTP API: /v1/completions, /v1/chat/completions, /v1/models(/{id}) and /health, on the same
// admission path (limits, tokenization, scheduler), API keys and metrics as the gRPC API. Requests are placed on
// this router's groups; unlike gRPC, they are not forwarded to a peer router. `model` names the base model or a
// loaded LoRA adapter, as vLLM serves adapters.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "router/api_keys.h"
#include "router/http/http_server.h"
#include "router/openai/off_loop_work.h"
#include "router/openai/openai_error.h"
#include "router/request_admission.h"

namespace gemma::openai {

class Call;

// Runs on the HTTP server's loop: Handle is its handler.
class OpenAiService {
 public:
  // `served_model_name`: the name clients give as "model"; empty: the checkpoint's shape name.
  OpenAiService(const RequestAdmission* admission, const ApiKeys* keys, std::string served_model_name);
  ~OpenAiService();
  void Handle(std::shared_ptr<http::Exchange> exchange);
  // The name the model is served under, once a group has joined.
  std::string ModelName(const ServedModel& model) const;
  // The 413 body for a request to `path` past the body limit (the HTTP server answers it before Handle), counted
  // as refused.
  std::string TooLargeBody(std::string_view path, size_t body_bytes, size_t max_body_bytes) const;

 private:
  friend class Call;
  void Generate(std::shared_ptr<http::Exchange> exchange, bool chat, std::shared_ptr<const ServedModel> model,
                const RequestAdmission::Origin& origin);
  // Answers with `error` and counts the request as refused.
  void Refuse(http::Exchange& exchange, const ApiError& error, const RequestAdmission::Origin& origin) const;
  // The base model, then every adapter the groups hold (vLLM's shape: an adapter's parent is the base model).
  // GET /v1/models (`id` empty), or GET /v1/models/{id}: that model's entry, 404 when it is not served.
  void Models(http::Exchange& exchange, const ServedModel& model, const std::string& id);
  // 404 model_not_found for `asked`, naming the base model and the adapters loaded now.
  ApiError UnknownModel(const std::string& asked, const ServedModel& model) const;
  void Done(Call* call) { calls_.erase(call); }

  const RequestAdmission* admission_;
  const ApiKeys* keys_;
  const std::string served_model_name_;
  absl::flat_hash_map<Call*, std::shared_ptr<Call>> calls_;  // running; loop thread only
  // Prompts of more than kTokenizeOnLoopBytes are tokenized off the loop, at most kMaxTokenizingBytes of them
  // waiting or being tokenized at once (a backlog of 4 MiB bodies would otherwise hold memory and delay every large
  // prompt without bound); more are refused 503, unless nothing else waits.
  static constexpr int64_t kTokenizeOnLoopBytes = 64 << 10;
  static constexpr int64_t kMaxTokenizingBytes = 32 << 20;
  int64_t tokenizing_bytes_ = 0;  // loop thread only
  // Last, so it is joined first: no job outlives the service.
  OffLoopWork tokenizing_{2};
};

}  // namespace gemma::openai
