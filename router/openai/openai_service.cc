#include "router/openai/openai_service.h"

#include <atomic>
#include <cstring>
#include <ctime>
#include <random>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "router/bounded_json.h"
#include "router/openai/openai_request.h"
#include "router/openai/openai_response.h"
#include "tokenizer/utf8.h"

namespace gemma::openai {
namespace {

// The metrics' endpoint label: one of a fixed set, whatever paths and ids clients send.
std::string EndpointLabel(std::string_view path) {
  constexpr std::string_view kOneModel = "/v1/models/";
  if (path == "/v1/completions" || path == "/v1/chat/completions" || path == "/v1/models") return std::string(path);
  if (path.starts_with(kOneModel) && path.size() > kOneModel.size()) return "/v1/models/{id}";
  return "other";
}

constexpr char kJson[] = "application/json";

// An error answer. A full queue (429) or no healthy group (503) passes: Retry-After tells clients when to come back
// (OpenAI's SDKs honour it in their retries), a second for a queue, longer for groups that reconnect.
void ReplyError(http::Exchange& exchange, const ApiError& error) {
  if (error.http_status == 429) exchange.AddHeader("Retry-After", "1");
  if (error.http_status == 503) exchange.AddHeader("Retry-After", "5");
  exchange.Reply(error.http_status, kJson, error.ToJson());
}

std::string NewId(const char* prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return absl::StrFormat("%s%016x%016x", prefix, rng(), rng());
}

}  // namespace

// What a call's prompts become off the loop: each prompt's token ids (or why it has none) and, with echo, the text
// its choices begin with, in the order of the call's prompts.
struct TokenizedPrompts {
  std::vector<absl::StatusOr<std::vector<int32_t>>> ids;
  std::vector<std::string> echoed;
};

// One generation call: its choices' requests and what has been sent of them. TokenizePrompts may run on any
// thread; everything else runs on the loop thread.
class Call {
 public:
  Call(OpenAiService* service, std::shared_ptr<const ServedModel> model, std::shared_ptr<http::Exchange> exchange,
       ParsedRequest parsed, ResponseContext context, RequestAdmission::Origin origin)
      : service_(service),
        model_(std::move(model)),
        exchange_(std::move(exchange)),
        parsed_(std::move(parsed)),
        context_(std::move(context)),
        origin_(std::move(origin)) {}

  ~Call() { CancelAll(); }

  // Reads only what is immutable, so it runs off the loop; stops early once the client has gone.
  TokenizedPrompts TokenizePrompts(const RequestAdmission& admission) const {
    TokenizedPrompts t;
    for (const v1::GenerateRequest& prompt : parsed_.prompts) {
      if (abandoned_.load(std::memory_order_relaxed)) break;
      t.ids.push_back(admission.PromptIds(*model_, prompt.input()));
      if (!parsed_.echo) continue;
      if (prompt.input().has_text()) {
        t.echoed.push_back(prompt.input().text());
      } else {
        const auto& ids = prompt.input().token_ids().ids();
        t.echoed.push_back(context_.tokenizer->Decode(std::vector<int32_t>(ids.begin(), ids.end())).value_or(""));
      }
    }
    return t;
  }

  // Calls ClientGone when the client leaves, from now on: before Start too, so that tokenizing stops early.
  void WatchClient(const std::shared_ptr<Call>& self) {
    std::weak_ptr<Call> weak = self;
    exchange_->OnClose([weak] {
      if (auto call = weak.lock()) call->ClientGone();
    });
  }

  // Admits every choice (`prompts` from TokenizePrompts); on the first refusal cancels those admitted and answers
  // the error.
  void Start(const RequestAdmission& admission, const std::shared_ptr<Call>& self, http::Server::Poster poster,
             TokenizedPrompts prompts) {
    if (finished_ || exchange_->closed()) {  // gone while its prompts were tokenized: counted as cancelled
      admission.Reject(absl::CancelledError("the client left while its prompt was tokenized"), origin_);
      ClientGone();
      service_->Done(this);  // only now, on the loop: until Start, calls_ keeps the call from ending off the loop
      return;
    }
    started_ = true;
    std::vector<absl::StatusOr<std::vector<int32_t>>>& prompt_ids = prompts.ids;
    echoed_ = std::move(prompts.echoed);
    auto wake_pending = std::make_shared<std::atomic<bool>>(false);
    std::weak_ptr<Call> weak = self;
    RequestAdmission::Origin origin = origin_;
    // Runs on a group's step thread: only hands a pump to the loop, at most one waiting at a time.
    origin.notify = [wake_pending, weak, poster] {
      if (wake_pending->exchange(true)) return;
      poster([wake_pending, weak] {
        wake_pending->store(false);
        if (auto call = weak.lock()) call->Pump();
      });
    };
    const int choices = parsed_.choices();
    // `p`: the prompt the refusal is about, named where the request has several.
    auto refuse = [&](const absl::Status& status, size_t p) {
      admission.Reject(status, origin_);
      ApiError e = FromStatus(status);
      // The admission speaks the gRPC API's names: the fields whose HTTP names differ are renamed, and a fault of
      // the prompt itself is laid on the prompt, not on max_tokens that its message may mention.
      const char* prompt_field = parsed_.chat ? "messages" : "prompt";
      const std::string prompt_name =
          parsed_.prompts.size() > 1 ? absl::StrCat(prompt_field, "[", p, "]") : std::string(prompt_field);
      bool renamed = false;
      for (const char* grpc_name : {"input.text", "input.token_ids"}) {
        if (e.message.starts_with(grpc_name)) {
          e.message = absl::StrCat(prompt_name, e.message.substr(std::strlen(grpc_name)));
          e.param = prompt_field;
          renamed = true;
        }
      }
      if (parsed_.max_tokens_defaulted) {
        const int32_t tokens = parsed_.prompts[p].parameters().max_new_tokens();
        e.message = absl::StrReplaceAll(
            e.message, {{absl::StrCat("max_new_tokens (", tokens, ")"),
                         absl::StrCat("max_new_tokens (", tokens, ", the default when 'max_tokens' is not given)")}});
      }
      for (const auto& [grpc_name, http_name] :
           {std::pair{"max_new_tokens", parsed_.max_tokens_field}, std::pair{"stop_sequences", "stop"},
            std::pair{"min_new_tokens", "min_tokens"}}) {
        if (e.message.find(grpc_name) != std::string::npos) {
          e.message = absl::StrReplaceAll(e.message, {{grpc_name, http_name}});
          e.param = http_name;
        }
      }
      if (e.message.starts_with("the prompt")) e.param = prompt_field;
      if (!renamed && parsed_.prompts.size() > 1 && status.code() == absl::StatusCode::kInvalidArgument) {
        e.message = absl::StrCat(prompt_name, ": ", e.message);
      }
      Fail(e);
    };
    // Echo with logprobs: each prompt scored once, whatever number of choices share it; a prompt of one token has
    // nothing to score (its token's log-prob is null).
    for (size_t p = 0; p < parsed_.prompts.size(); ++p) {
      const v1::GenerateRequest& prompt = parsed_.prompts[p];
      if (!parsed_.echo || (!parsed_.logprobs && parsed_.generates())) break;
      if (!parsed_.generates()) {
        if (absl::Status s = admission.Validate(*model_, prompt); !s.ok()) return refuse(s, p);
      }
      const absl::StatusOr<std::vector<int32_t>>& ids = prompt_ids[p];
      if (!ids.ok()) return refuse(ids.status(), p);
      prompt_tokens_.push_back(static_cast<int64_t>(ids->size()));
      v1::ScoreResponse unscored;
      unscored.mutable_token_ids()->Add(ids->begin(), ids->end());
      prompt_scores_.push_back(std::move(unscored));
      scores_.push_back(nullptr);
      if (!parsed_.logprobs || ids->size() < 2) continue;  // echo alone, or nothing to score
      if (absl::Status s = admission.ValidateScoreLength(*model_, static_cast<int32_t>(ids->size())); !s.ok()) {
        return refuse(s, p);
      }
      RequestAdmission::Origin part = origin;
      part.counted = false;  // counted with the request it belongs to
      auto scoring = admission.AdmitScore(*model_, *ids, parsed_.top_logprobs, part);
      if (!scoring.ok()) return refuse(scoring.status(), p);
      scores_.back() = *scoring;
    }
    for (const auto& s : scores_) scored_.push_back(s == nullptr);
    for (size_t p = 0; p < parsed_.prompts.size(); ++p) {
      const v1::GenerateRequest& prompt = parsed_.prompts[p];
      if (!parsed_.generates()) break;
      // Tokenized once, its best_of candidates (n unless given) admitted together: they share its KV blocks. A beam
      // search is one request, whose beams are its choices.
      absl::StatusOr<std::vector<int32_t>>& ids = prompt_ids[p];
      if (!ids.ok()) return refuse(ids.status(), p);
      v1::GenerateRequest samples = prompt;
      samples.mutable_parameters()->set_n(parsed_.beams > 0 ? 1 : parsed_.best_of);
      auto admitted = admission.AdmitSamples(*model_, samples, origin, &*ids);
      if (!admitted.ok()) return refuse(admitted.status(), p);
      requests_.insert(requests_.end(), admitted->begin(), admitted->end());
    }
    done_.assign(requests_.size(), false);
    for (int i = 0; i < choices; ++i) offsets_.push_back(Utf8Characters(Echoed(i)));
    waiting_ = requests_.size();
    for (const auto& s : scores_) waiting_ += s != nullptr;
    if (parsed_.stream) {
      exchange_->StartStream(200, "text/event-stream");
      stream_started_ = true;
      for (int i = 0; i < choices; ++i) {
        if (parsed_.chat) exchange_->Send(RoleChunk(context_, i));
        if (!Echoed(i).empty()) exchange_->Send(TextChunk(context_, i, Echoed(i), {}));
      }
    }
    Pump();
  }

  // Takes what the requests have produced: streams it, and answers once every choice has ended.
  void Pump() {
    if (finished_) return;
    for (size_t i = 0; i < requests_.size(); ++i) {
      if (done_[i]) continue;
      bool done = false;
      std::vector<v1::GenerateStreamResponse> events = requests_[i]->TakeReady(&done);
      for (const auto& e : events) {
        if (finished_) return;  // the client left while this pump was sending
        // A beam search's events name their beam's rank: beam b of prompt i is choice i * n + b, and beams past
        // the n best are not returned.
        const int rank = parsed_.beams == 0 ? 0 : e.has_token() ? e.token().index() : e.final().index();
        if (rank >= parsed_.n) continue;
        const int choice = parsed_.beams == 0 ? static_cast<int>(i) : static_cast<int>(i) * parsed_.n + rank;
        if (e.has_token()) {
          // A token whose text is held back (a byte of a character, a stop string's start) sends nothing, as
          // OpenAI's streams send no empty delta, unless its log-prob was asked for. (Streams have one request
          // per choice: best_of > n, whose extra candidates have no choice, is not streamed.)
          if (parsed_.stream) {
            if (context_.logprobs || !e.token().text_delta().empty()) {
              exchange_->Send(
                  TextChunk(context_, choice, e.token().text_delta(), {e.token().token()}, offsets_[choice]));
            }
            // Only completions' log-probs carry text_offset.
            if (context_.logprobs && !parsed_.chat) {
              offsets_[choice] += TokenCharacters(context_, e.token().token().id());
            }
          }
        } else if (e.has_final()) {
          // Prompt tokens once per prompt, however many candidates share it; every candidate's generated tokens
          // (as OpenAI bills best_of); a beam search's returned beams.
          if (parsed_.beams > 0 ? rank == 0 : i % parsed_.best_of == 0) {
            usage_.prompt_tokens += e.final().usage().prompt_tokens();
          }
          usage_.completion_tokens += e.final().usage().generated_tokens();
          if (parsed_.stream) exchange_->Send(FinishChunk(context_, choice, e.final().finish_reason()));
        }
      }
      if (!done) continue;
      done_[i] = true;
      --waiting_;
      if (absl::Status s = requests_[i]->Wait(); !s.ok()) {
        Fail(FromStatus(s));
        return;
      }
    }
    for (size_t p = 0; p < scores_.size(); ++p) {
      if (scored_[p] || !scores_[p]->WaitFor(std::chrono::milliseconds(0))) continue;
      scored_[p] = true;
      --waiting_;
      if (absl::Status s = scores_[p]->Wait(); !s.ok()) {
        Fail(FromStatus(s));
        return;
      }
      prompt_scores_[p] = scores_[p]->ScoreResult();
    }
    if (waiting_ == 0 && !finished_) Complete();
  }

 private:
  void Complete() {
    if (finished_) return;
    finished_ = true;
    if (parsed_.stream) {
      if (parsed_.include_usage) exchange_->Send(UsageChunk(context_, usage_));
      exchange_->Send(kDoneChunk);
      exchange_->End();
    } else {
      std::vector<v1::GenerateResponse> candidates;
      for (auto& r : requests_) candidates.push_back(r->Response());
      std::vector<v1::GenerateResponse> results = parsed_.beams > 0
                                                      ? BestBeams(candidates, parsed_.n)
                                                      : BestOf(std::move(candidates), parsed_.best_of, parsed_.n);
      if (!parsed_.generates()) {
        // Echo alone: the prompt, nothing generated, and its tokens counted once.
        results.assign(parsed_.choices(), v1::GenerateResponse());
        for (auto& r : results) r.set_finish_reason(v1::FINISH_REASON_LENGTH);
        for (int64_t n : prompt_tokens_) usage_.prompt_tokens += n;
      }
      std::vector<const v1::ScoreResponse*> prompt_scores;
      for (int i = 0; i < parsed_.choices() && parsed_.logprobs && !prompt_scores_.empty(); ++i) {
        prompt_scores.push_back(&prompt_scores_[parsed_.PromptOf(i)]);
      }
      exchange_->Reply(200, kJson, ResponseBody(context_, results, echoed_, parsed_.n, usage_, prompt_scores));
    }
    service_->Done(this);
  }

  void CancelAll() {
    for (auto& r : requests_) r->Cancel();
    for (auto& r : scores_) {
      if (r != nullptr) r->Cancel();
    }
  }

  void Fail(const ApiError& error) {
    if (finished_) return;
    finished_ = true;
    CancelAll();
    if (stream_started_) {
      // The status line (200) is gone already: the error travels as an event, as OpenAI's streams carry them.
      exchange_->Send(ErrorChunk(error.ToJson()));
      exchange_->Send(kDoneChunk);
      exchange_->End();
    } else {
      ReplyError(*exchange_, error);
    }
    service_->Done(this);
  }

  // Choice i's text begins with its prompt's, with echo.
  const std::string& Echoed(int choice) const {
    static const std::string kNone;
    return echoed_.empty() ? kNone : echoed_[parsed_.PromptOf(choice)];
  }

  void ClientGone() {
    abandoned_.store(true, std::memory_order_relaxed);
    if (finished_) return;
    finished_ = true;
    CancelAll();  // each leaves its group at the next step, freeing its KV blocks
    if (started_) service_->Done(this);  // before Start, Start does it
  }

  OpenAiService* service_;
  const std::shared_ptr<const ServedModel> model_;  // keeps the tokenizer the context points to
  std::shared_ptr<http::Exchange> exchange_;
  const ParsedRequest parsed_;
  const ResponseContext context_;
  const RequestAdmission::Origin origin_;
  std::vector<std::shared_ptr<ActiveRequest>> requests_;  // one per choice; none when nothing is generated
  std::vector<std::shared_ptr<ActiveRequest>> scores_;    // per prompt, for echo with logprobs; null: none to run
  std::vector<v1::ScoreResponse> prompt_scores_;          // per prompt, when echo: its ids, then their log-probs
  std::vector<int64_t> prompt_tokens_;                    // per prompt, when echo
  std::vector<std::string> echoed_;                       // per prompt, with echo: the text its choices begin with
  std::vector<bool> done_, scored_;
  std::vector<int64_t> offsets_;  // per choice: the characters of its tokens streamed so far (text_offset)
  size_t waiting_ = 0;  // requests and scorings not yet ended
  UsageCount usage_;
  bool finished_ = false;
  bool stream_started_ = false;
  bool started_ = false;  // Start has run: calls_ may let the call go
  std::atomic<bool> abandoned_{false};  // the client has gone: tokenizing may stop
};

OpenAiService::OpenAiService(const RequestAdmission* admission, const ApiKeys* keys, std::string served_model_name)
    : admission_(admission), keys_(keys), served_model_name_(std::move(served_model_name)) {}

OpenAiService::~OpenAiService() = default;

std::string OpenAiService::ModelName(const ServedModel& model) const {
  return served_model_name_.empty() ? model.info.shape_name() : served_model_name_;
}

void OpenAiService::Handle(std::shared_ptr<http::Exchange> exchange) {
  const std::string path(exchange->path());
  const std::string method(exchange->method());
  const bool generate = path == "/v1/completions" || path == "/v1/chat/completions";
  // GET /v1/models/{id}: one model (ids may hold '/', as Hugging Face names do, sent as is or as %2F).
  constexpr std::string_view kOneModel = "/v1/models/";
  const bool one_model = path.starts_with(kOneModel) && path.size() > kOneModel.size();
  const RequestAdmission::Origin origin{.protocol = "http", .endpoint = EndpointLabel(path)};
  auto answer = [&](const ApiError& e) { Refuse(*exchange, e, origin); };
  // A wrong method gets 405 naming the one the path takes (and Allow, as HTTP asks).
  auto wrong_method = [&](const char* allowed) {
    ApiError e = BadField("", absl::StrCat(method, " is not allowed on ", path, "; use ", allowed));
    e.http_status = 405;
    exchange->AddHeader("Allow", allowed);
    exchange->Reply(405, kJson, e.ToJson());
  };
  if (path == "/health") {
    if (method != "GET" && method != "HEAD") return wrong_method("GET, HEAD");
    // Unauthenticated, for load balancers and probes: 200 while some group serves.
    const bool healthy = admission_->Model().ok() && admission_->healthy_groups() > 0;
    exchange->Reply(healthy ? 200 : 503, kJson, healthy ? "{\"status\":\"ok\"}" : "{\"status\":\"unavailable\"}");
    return;
  }
  if (!generate && path != "/v1/models" && !one_model) {
    ApiError e = BadField("", absl::StrCat("no such endpoint ", method, " ", path,
                                           "; served: POST /v1/completions, POST /v1/chat/completions, "
                                           "GET /v1/models, GET /v1/models/{id}, GET /health"));
    e.http_status = 404;
    e.code = "not_found";
    exchange->Reply(404, kJson, e.ToJson());
    return;
  }
  if ((generate && method != "POST") || (!generate && method != "GET")) return wrong_method(generate ? "POST" : "GET");
  const std::optional<std::string_view> authorization = exchange->header("Authorization");
  if (absl::Status s = keys_->CheckAuthorization(authorization ? &*authorization : nullptr); !s.ok()) {
    return answer(FromStatus(s));
  }
  auto model = admission_->Model();
  if (!model.ok()) return answer(FromStatus(model.status()));
  if (!generate) {
    return Models(*exchange, **model, one_model ? http::PercentDecoded(path.substr(kOneModel.size())) : std::string());
  }
  Generate(std::move(exchange), path == "/v1/chat/completions", *model, origin);
}

std::string OpenAiService::TooLargeBody(std::string_view path, size_t body_bytes, size_t max_body_bytes) const {
  const ApiError error = BodyTooLarge(body_bytes, max_body_bytes);
  admission_->Reject(absl::Status(CodeOf(error), error.message),
                     {.protocol = "http", .endpoint = EndpointLabel(path)});
  return error.ToJson();
}

void OpenAiService::Refuse(http::Exchange& exchange, const ApiError& error,
                           const RequestAdmission::Origin& origin) const {
  admission_->Reject(absl::Status(CodeOf(error), error.message), origin);
  ReplyError(exchange, error);
}

void OpenAiService::Models(http::Exchange& exchange, const ServedModel& model, const std::string& id) {
  const std::string base = ModelName(model);
  const auto created = static_cast<int64_t>(std::time(nullptr));
  auto entry = [&](const std::string& name) {
    return nlohmann::json{{"id", name},
                          {"object", "model"},
                          {"created", created},
                          {"owned_by", "gemma-serve"},
                          {"root", base},
                          {"parent", nullptr},
                          {"max_model_len", admission_->MaxContext(model)}};
  };
  nlohmann::json data = nlohmann::json::array({entry(base)});
  // Adapters as vLLM lists them: their own id, the base model as parent.
  for (const std::string& adapter : admission_->AdapterNames()) {
    if (adapter == base) continue;  // the base model's name wins (see UnknownModel)
    nlohmann::json m = entry(adapter);
    m["parent"] = base;
    data.push_back(std::move(m));
  }
  if (id.empty()) {
    exchange.Reply(200, kJson, nlohmann::json{{"object", "list"}, {"data", std::move(data)}}.dump());
    return;
  }
  for (const nlohmann::json& m : data) {
    if (m.at("id") == id) return exchange.Reply(200, kJson, m.dump());
  }
  const ApiError e = UnknownModel(id, model);
  exchange.Reply(e.http_status, kJson, e.ToJson());
}

ApiError OpenAiService::UnknownModel(const std::string& asked, const ServedModel& model) const {
  std::vector<std::string> allowed = {ModelName(model)};
  for (std::string& adapter : admission_->AdapterNames()) {
    if (adapter != allowed[0]) allowed.push_back(std::move(adapter));
  }
  ApiError e = BadField("model", absl::StrCat("the model '", asked, "' does not exist; allowed: ",
                                              absl::StrJoin(allowed, ", "), " (the base model, then its LoRA adapters)"));
  e.http_status = 404;
  e.code = "model_not_found";
  return e;
}

void OpenAiService::Generate(std::shared_ptr<http::Exchange> exchange, bool chat,
                             std::shared_ptr<const ServedModel> model, const RequestAdmission::Origin& origin) {
  auto answer = [&](const ApiError& e) { Refuse(*exchange, e, origin); };
  bool too_deep = false;
  const nlohmann::json body = ParseBoundedJson(exchange->body(), &too_deep);
  if (too_deep) {
    return answer(BadField("", absl::StrCat("the request body nests deeper than ", kMaxJsonDepth, " levels")));
  }
  if (body.is_discarded()) return answer(BadField("", "the request body is not valid JSON"));
  RequestContext rc;
  rc.chat_system_role = RequestAdmission::LimitsOf(*model).chat_system_role;
  rc.max_stop_sequences = admission_->limits().max_stop_sequences;
  rc.max_top_logprobs = admission_->limits().max_top_logprobs;
  rc.max_new_tokens = admission_->limits().max_new_tokens;
  rc.vocab_size = RequestAdmission::LimitsOf(*model).vocab_size;
  ParseResult parsed = chat ? ParseChatRequest(body, rc) : ParseCompletionRequest(body, rc);
  if (auto* e = std::get_if<ApiError>(&parsed)) return answer(*e);
  ParsedRequest& request = std::get<ParsedRequest>(parsed);
  const std::string name = ModelName(*model);
  // As vLLM serves LoRA: `model` names the base model or a loaded adapter, which then applies to every prompt.
  if (request.model != name) {
    if (!admission_->HasAdapter(request.model)) return answer(UnknownModel(request.model, *model));
    for (v1::GenerateRequest& prompt : request.prompts) prompt.set_adapter(request.model);
  }
  ResponseContext context;
  context.id = NewId(chat ? "chatcmpl-" : "cmpl-");
  context.created = static_cast<int64_t>(std::time(nullptr));
  context.model = request.model;
  context.chat = chat;
  context.logprobs = request.logprobs;
  context.tokenizer = model->tokenizer.get();
  context.vocabulary = model->structured_output->vocabulary();
  int64_t prompt_bytes = 0;
  for (const v1::GenerateRequest& prompt : request.prompts) {
    prompt_bytes += static_cast<int64_t>(prompt.input().text().size()) +
                    static_cast<int64_t>(sizeof(int32_t)) * prompt.input().token_ids().ids_size();
    for (const auto& m : prompt.input().chat().messages()) {
      prompt_bytes += static_cast<int64_t>(m.role().size() + m.content().size());
    }
  }
  const bool on_loop = prompt_bytes <= kTokenizeOnLoopBytes;  // under a millisecond's work: no thread hops
  // One request larger than the bound still goes when nothing else waits: refused, it could never be served.
  if (!on_loop && tokenizing_bytes_ > 0 && tokenizing_bytes_ + prompt_bytes > kMaxTokenizingBytes) {
    return answer(FromStatus(absl::UnavailableError(absl::StrFormat(
        "%.1f MiB of prompts wait to be tokenized already, and this request's %.1f MiB would pass the %d MiB that "
        "may wait at once; retry later",
        tokenizing_bytes_ / 1048576.0, prompt_bytes / 1048576.0, kMaxTokenizingBytes >> 20))));
  }
  http::Server::Poster poster = exchange->server().poster();
  auto call = std::make_shared<Call>(this, model, exchange, std::move(request), std::move(context), origin);
  calls_[call.get()] = call;
  call->WatchClient(call);
  if (on_loop) return call->Start(*admission_, call, std::move(poster), call->TokenizePrompts(*admission_));
  tokenizing_bytes_ += prompt_bytes;
  tokenizing_.Run([this, call, prompt_bytes, admission = admission_, poster]() mutable {
    TokenizedPrompts prompts = call->TokenizePrompts(*admission);
    // The call moves on, so its last reference never ends here, off the loop: calls_ holds it until Start has run.
    // Dropped if the server has stopped meanwhile: it answered the exchange 503 as it closed.
    poster([this, call = std::move(call), prompt_bytes, admission, poster, prompts = std::move(prompts)]() mutable {
      tokenizing_bytes_ -= prompt_bytes;
      call->Start(*admission, call, std::move(poster), std::move(prompts));
    });
  });
}

}  // namespace gemma::openai
