#include "router/openai/openai_request.h"

#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/scheduler.h"
#include "tokenizer/chat_template.h"

namespace gemma::openai {
namespace {

using nlohmann::json;

// A field's value, null read as absent (the SDKs send null for unset options).
const json* Field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

// Reads the request's fields, stopping at the first bad one.
class Reader {
 public:
  explicit Reader(const json& body) : body_(body) {}
  bool failed() const { return error_.has_value(); }
  ApiError error() const { return *error_; }
  void Fail(std::string param, std::string message) {
    if (!error_) error_ = BadField(std::move(param), std::move(message));
  }

  std::optional<double> Number(const char* name, double lo, double hi, bool lo_open = false) {
    const json* v = Field(body_, name);
    if (v == nullptr || failed()) return std::nullopt;
    if (!v->is_number()) {
      Fail(name, absl::StrCat("'", name, "' must be a number"));
      return std::nullopt;
    }
    const double x = v->get<double>();
    if (!std::isfinite(x) || x > hi || (lo_open ? x <= lo : x < lo)) {
      Fail(name, absl::StrCat("'", name, "' is ", v->dump(), "; allowed: ", lo_open ? "(" : "[", lo, ", ", hi, "]"));
      return std::nullopt;
    }
    return x;
  }
  std::optional<int64_t> Integer(const char* name, int64_t lo, int64_t hi) {
    const json* v = Field(body_, name);
    if (v == nullptr || failed()) return std::nullopt;
    // A whole number written as a float (2.0) is taken as that number, as OpenAI's own server takes it.
    const double d = v->is_number_float() ? v->get<double>() : 0.0;
    if (!v->is_number_integer() && !(v->is_number_float() && std::isfinite(d) && std::trunc(d) == d)) {
      Fail(name, absl::StrCat("'", name, "' must be an integer in ", lo, "..", hi));
      return std::nullopt;
    }
    // Past int64 (above INT64_MAX, or a float outside [-2^63, 2^63)) is past every range here: said as sent,
    // never clamped into one (nor converted: that would be undefined).
    const bool huge = v->is_number_integer() ? v->is_number_unsigned() && v->get<uint64_t>() > uint64_t{INT64_MAX}
                                             : !(d >= -0x1p63 && d < 0x1p63);
    const int64_t x = huge ? 0 : v->is_number_integer() ? v->get<int64_t>() : static_cast<int64_t>(d);
    if (huge || x < lo || x > hi) {
      Fail(name, absl::StrCat("'", name, "' is ", v->dump(), "; allowed: ", lo, "..", hi));
      return std::nullopt;
    }
    return x;
  }
  std::optional<bool> Bool(const char* name) {
    const json* v = Field(body_, name);
    if (v == nullptr || failed()) return std::nullopt;
    if (!v->is_boolean()) {
      Fail(name, absl::StrCat("'", name, "' must be true or false"));
      return std::nullopt;
    }
    return v->get<bool>();
  }
  std::optional<std::string> String(const char* name) {
    const json* v = Field(body_, name);
    if (v == nullptr || failed()) return std::nullopt;
    if (!v->is_string()) {
      Fail(name, absl::StrCat("'", name, "' must be a string"));
      return std::nullopt;
    }
    return v->get<std::string>();
  }

 private:
  const json& body_;
  std::optional<ApiError> error_;
};

// An object whose values are all strings (OpenAI's metadata).
bool IsStringObject(const json& v) {
  if (!v.is_object()) return false;
  for (const auto& [_, value] : v.items()) {
    if (!value.is_string()) return false;
  }
  return true;
}

// The fields this server does not implement, refused with a word for those people expect to work. `no_op`: the
// values that ask for nothing this server would do differently, as SDKs and agent frameworks send them by default
// (vLLM and OpenAI serve such requests alike), taken; `said`: those values, in a refusal.
struct Unsupported {
  bool (*no_op)(const json&) = nullptr;
  const char* said = nullptr;
};

const std::map<std::string, Unsupported, std::less<>>& UnsupportedFields() {
  static const auto* fields = new std::map<std::string, Unsupported, std::less<>>{
      {"tools", {[](const json& v) { return v.is_array() && v.empty(); }, "[] (no tools)"}},
      {"functions", {[](const json& v) { return v.is_array() && v.empty(); }, "[] (no functions)"}},
      {"tool_choice", {[](const json& v) { return v == "none"; }, "\"none\""}},
      {"function_call", {[](const json& v) { return v == "none"; }, "\"none\""}},
      {"parallel_tool_calls", {[](const json& v) { return v.is_boolean(); }, "true or false (with no tools)"}},
      {"store", {[](const json& v) { return v == false; }, "false"}},
      {"service_tier", {[](const json& v) { return v == "auto" || v == "default"; }, "\"auto\" or \"default\""}},
      {"metadata", {IsStringObject, "an object of strings (nothing is stored)"}},
      {"logit_bias", {}},
      {"audio", {}},
      {"modalities", {}},
      {"prediction", {}},
      {"suffix", {}},
      {"best_of", {}},
      {"reasoning_effort", {}},
      {"web_search_options", {}}};
  return *fields;
}

// Fields a body may carry; anything else is refused.
std::optional<ApiError> CheckFields(const json& body, const std::set<std::string>& known) {
  for (const auto& [key, value] : body.items()) {
    if (known.count(key)) continue;
    if (value.is_null()) continue;  // an unset option, as the SDKs send it
    if (auto u = UnsupportedFields().find(key); u != UnsupportedFields().end()) {
      if (u->second.no_op != nullptr && u->second.no_op(value)) continue;
      const char* said = u->second.said;
      return BadField(key, absl::StrCat("'", key, "' is not supported by this server",
                                        said ? absl::StrCat("; allowed: ", said, ", or leave it out") : ""));
    }
    return BadField(key, absl::StrCat("unrecognized request argument '", key, "'; supported: ",
                                      absl::StrJoin(known, ", ")));
  }
  return std::nullopt;
}

// response_format, into `p` (text: nothing to set).
void ReadResponseFormat(Reader& r, const json& body, v1::GenerationParameters& p) {
  if (const json* format = Field(body, "response_format"); format != nullptr && !r.failed()) {
    const json* type = format->is_object() ? Field(*format, "type") : nullptr;
    if (type == nullptr || !type->is_string()) {
      r.Fail("response_format", "'response_format' must be an object with a 'type': text, json_object or json_schema");
      return;
    }
    const std::string t = type->get<std::string>();
    if (t == "text") return;
    if (t == "json_object") {
      p.mutable_response_format()->set_type("json_object");
      return;
    }
    if (t != "json_schema") {
      r.Fail("response_format.type", absl::StrCat("'response_format.type' \"", t,
                                                  "\" is not supported; allowed: text, json_object, json_schema"));
      return;
    }
    const json* js = Field(*format, "json_schema");
    const json* schema = js != nullptr && js->is_object() ? Field(*js, "schema") : nullptr;
    if (schema == nullptr || !(schema->is_object() || schema->is_boolean())) {
      r.Fail("response_format.json_schema.schema", "'response_format.json_schema.schema' must be a JSON Schema object");
      return;
    }
    p.mutable_response_format()->set_type("json_schema");
    p.mutable_response_format()->set_json_schema(schema->dump());
  }
}

// The sampling fields both endpoints share, into `p`; false (and `r` failed) on a bad one.
void ReadSampling(Reader& r, const json& body, const RequestContext& context, v1::GenerationParameters& p,
                  ParsedRequest& out) {
  // OpenAI's defaults: temperature 1, top_p 1.
  p.set_temperature(static_cast<float>(r.Number("temperature", 0, 2).value_or(1.0)));
  p.set_top_p(static_cast<float>(r.Number("top_p", 0, 1, /*lo_open=*/true).value_or(1.0)));
  if (auto k = r.Integer("top_k", -1, 1 << 30)) p.set_top_k(*k < 0 ? 0 : static_cast<int32_t>(*k));
  if (auto x = r.Number("presence_penalty", -2, 2)) p.set_presence_penalty(static_cast<float>(*x));
  if (auto x = r.Number("frequency_penalty", -2, 2)) p.set_frequency_penalty(static_cast<float>(*x));
  if (auto x = r.Number("repetition_penalty", 0, 100, /*lo_open=*/true)) p.set_repetition_penalty(static_cast<float>(*x));
  if (auto seed = r.Integer("seed", INT64_MIN, INT64_MAX)) p.set_seed(static_cast<uint64_t>(*seed));
  // vLLM's extensions for outputs of a known length (what load tests send).
  p.set_ignore_eos(r.Bool("ignore_eos").value_or(false));
  if (auto m = r.Integer("min_tokens", 0, context.max_new_tokens)) p.set_min_new_tokens(static_cast<int32_t>(*m));
  out.n = static_cast<int>(r.Integer("n", 1, context.max_n).value_or(1));
  out.best_of = out.n;
  out.stream = r.Bool("stream").value_or(false);
  if (const json* so = Field(body, "stream_options"); so != nullptr && !r.failed()) {
    if (!so->is_object()) {
      r.Fail("stream_options", "'stream_options' must be an object");
    } else if (!out.stream) {
      r.Fail("stream_options", "'stream_options' is only allowed with 'stream': true");
    } else {
      for (const auto& [key, value] : so->items()) {
        if (key != "include_usage") {
          r.Fail(absl::StrCat("stream_options.", key), absl::StrCat("'stream_options.", key, "' is not supported"));
        } else if (!value.is_boolean()) {
          r.Fail("stream_options.include_usage", "'stream_options.include_usage' must be true or false");
        } else {
          out.include_usage = value.get<bool>();
        }
      }
    }
  }
  if (const json* stop = Field(body, "stop"); stop != nullptr && !r.failed()) {
    std::vector<std::string> stops;
    if (stop->is_string()) {
      stops.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const auto& s : *stop) {
        if (!s.is_string()) {
          r.Fail("stop", "'stop' must be a string or a list of strings");
          return;
        }
        stops.push_back(s.get<std::string>());
      }
    } else {
      r.Fail("stop", "'stop' must be a string or a list of strings");
      return;
    }
    if (static_cast<int>(stops.size()) > context.max_stop_sequences) {
      r.Fail("stop", absl::StrCat("'stop' lists ", stops.size(), " sequences; allowed: at most ",
                                  context.max_stop_sequences));
      return;
    }
    for (auto& s : stops) {
      if (s.empty()) {
        r.Fail("stop", "'stop' sequences must not be empty");
        return;
      }
      p.add_stop_sequences(std::move(s));
    }
  }
  ReadResponseFormat(r, body, p);
  // A grammar ends its output with the model's stop: ignoring or holding it back would run past a valid output.
  if (!r.failed() && p.has_response_format() && (p.ignore_eos() || p.min_new_tokens() > 0)) {
    const char* name = p.ignore_eos() ? "ignore_eos" : "min_tokens";
    r.Fail(name, absl::StrCat("'", name, "' cannot be combined with a structured 'response_format': its grammar ends ",
                              "the output"));
  }
}

// A message's content: a string, or a list of text parts.
std::optional<std::string> Content(const json& message, const std::string& where, Reader& r) {
  const json* c = Field(message, "content");
  if (c == nullptr) {
    r.Fail(where + ".content", absl::StrCat("'", where, ".content' is required"));
    return std::nullopt;
  }
  if (c->is_string()) return c->get<std::string>();
  if (!c->is_array()) {
    r.Fail(where + ".content", absl::StrCat("'", where, ".content' must be a string or a list of text parts"));
    return std::nullopt;
  }
  std::string text;
  for (size_t j = 0; j < c->size(); ++j) {
    const json& part = (*c)[j];
    const std::string at = absl::StrCat(where, ".content[", j, "]");
    const json* type = part.is_object() ? Field(part, "type") : nullptr;
    if (type == nullptr || !type->is_string() || type->get<std::string>() != "text") {
      r.Fail(at + ".type", absl::StrCat("'", at, ".type' must be \"text\"; this server takes text only"));
      return std::nullopt;
    }
    const json* t = Field(part, "text");
    if (t == nullptr || !t->is_string()) {
      r.Fail(at + ".text", absl::StrCat("'", at, ".text' must be a string"));
      return std::nullopt;
    }
    text += t->get<std::string>();
  }
  return text;
}

// vLLM's beam-search extension: use_beam_search, length_penalty, early_stopping. The width is best_of (n unless
// given), and the n best beams are the choices. Beams rank the model's own log-probs, so the sampling fields must be
// unset (or their neutral value); OpenAI's default temperature 1 becomes 0 here.
void ReadBeamSearch(Reader& r, const json& body, v1::GenerationParameters& p, ParsedRequest& out) {
  const bool beams = r.Bool("use_beam_search").value_or(false);
  const auto length_penalty = r.Number("length_penalty", -10, 10);
  const auto early_stopping = r.Bool("early_stopping");
  if (r.failed()) return;
  if (!beams) {
    if (length_penalty || early_stopping) {
      const char* name = length_penalty ? "length_penalty" : "early_stopping";
      r.Fail(name, absl::StrCat("'", name, "' applies to beam search; allowed: with 'use_beam_search': true"));
    }
    return;
  }
  if (out.best_of > BeamSearchParams::kMaxBeams) {
    const char* name = out.best_of > out.n ? "best_of" : "n";
    r.Fail(name, absl::StrCat("'", name, "' is ", out.best_of, " beams; allowed with 'use_beam_search': 1..",
                              BeamSearchParams::kMaxBeams));
    return;
  }
  auto neutral = [&](const char* name, std::initializer_list<double> allowed) {
    const json* v = Field(body, name);
    if (v == nullptr || r.failed()) return;
    for (double a : allowed) {
      if (v->is_number() && v->get<double>() == a) return;
    }
    r.Fail(name, absl::StrCat("'", name, "' cannot be combined with 'use_beam_search': beams rank the model's own ",
                              "log-probs; allowed: unset", allowed.size() > 0 ? absl::StrCat(" or ", *allowed.begin())
                                                                            : ""));
  };
  neutral("temperature", {0});
  neutral("top_p", {1});
  neutral("top_k", {-1, 0});
  neutral("presence_penalty", {0});
  neutral("frequency_penalty", {0});
  neutral("repetition_penalty", {1});
  neutral("stop", {});
  neutral("top_logprobs", {0});
  if (!out.chat) neutral("logprobs", {0});
  if (p.has_response_format()) neutral("response_format", {});
  if (p.ignore_eos()) neutral("ignore_eos", {});
  neutral("min_tokens", {0});
  if (r.failed()) return;
  out.beams = out.best_of;
  p.set_temperature(0);
  p.clear_top_p();
  p.set_num_beams(out.beams);
  if (length_penalty) p.set_length_penalty(static_cast<float>(*length_penalty));
  p.set_early_stopping(early_stopping.value_or(false));
}

bool ReadModelAndUser(Reader& r, const json& body, ParsedRequest& out) {
  const json* model = Field(body, "model");
  if (model == nullptr || !model->is_string()) {
    r.Fail("model", absl::StrCat("'model' ", model == nullptr ? "is required: a" : "must be a",
                                 " string naming the model (GET /v1/models lists it)"));
    return false;
  }
  out.model = model->get<std::string>();
  // OpenAI's end-user id: checked for its type, as OpenAI checks it, and otherwise unused.
  r.String("user");
  return true;
}

}  // namespace

ParseResult ParseCompletionRequest(const json& body, const RequestContext& context) {
  if (!body.is_object()) return BadField("", "the request body must be a JSON object");
  static const std::set<std::string> kKnown = {
      "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "presence_penalty",
      "frequency_penalty", "repetition_penalty", "logprobs", "echo", "stream", "stream_options", "user",
      "response_format", "best_of", "use_beam_search", "length_penalty", "early_stopping", "ignore_eos", "min_tokens"};
  if (auto e = CheckFields(body, kKnown)) return *e;
  ParsedRequest out;
  Reader r(body);
  ReadModelAndUser(r, body, out);
  v1::GenerationParameters p;
  // OpenAI's default for completions: 16 tokens. 0 (with echo): the prompt alone, scored when logprobs are asked for
  // (what evaluation harnesses send to score a text).
  const std::optional<int64_t> given_max_tokens = r.Integer("max_tokens", 0, context.max_new_tokens);
  const int64_t max_tokens = given_max_tokens.value_or(16);
  out.max_tokens_defaulted = !given_max_tokens.has_value();
  p.set_max_new_tokens(static_cast<int32_t>(max_tokens));
  ReadSampling(r, body, context, p, out);
  if (auto lp = r.Integer("logprobs", 0, context.max_top_logprobs)) {
    out.logprobs = true;
    out.top_logprobs = static_cast<int>(*lp);
    p.set_logprobs(true);
    p.set_top_logprobs(static_cast<int32_t>(*lp));
  }
  out.echo = r.Bool("echo").value_or(false);
  const auto best_of = r.Integer("best_of", 1, context.max_n);
  if (r.failed()) return r.error();
  out.best_of = static_cast<int>(best_of.value_or(out.n));
  if (out.best_of < out.n) {
    return BadField("best_of", absl::StrCat("'best_of' is ", out.best_of, " and 'n' ", out.n, "; allowed: best_of ",
                                            out.n, "..", context.max_n, " (at least n)"));
  }
  ReadBeamSearch(r, body, p, out);
  if (r.failed()) return r.error();
  // As OpenAI: candidates are ranked once all have ended, so there is nothing to stream before the end (beams are
  // streamed then, best first).
  if (out.best_of > out.n && out.stream && out.beams == 0) {
    return BadField("best_of", "'best_of' greater than 'n' is not supported with 'stream': true");
  }
  // The ranking sums each token's log-prob, so the candidates carry them even when the client did not ask.
  if (out.best_of > out.n && out.beams == 0) p.set_logprobs(true);
  if (max_tokens == 0 && !out.echo) {
    return BadField("max_tokens", absl::StrCat("'max_tokens' is 0 without 'echo'; allowed: 1..", context.max_new_tokens,
                                               ", or 0 with 'echo': true (the prompt alone)"));
  }
  out.generate = max_tokens > 0;
  if (!out.generate && p.has_response_format()) {
    return BadField("response_format", "'response_format' constrains generated text; with 'max_tokens' 0 there is none");
  }
  if (!out.generate && p.min_new_tokens() > 0) {
    return BadField("min_tokens",
                    "'min_tokens' holds back the end of generated text; with 'max_tokens' 0 there is none");
  }
  if (out.echo && out.logprobs && out.stream) {
    return BadField("echo", "'echo' with 'logprobs' (the prompt's log-probs) is not supported with 'stream': true");
  }
  if (max_tokens == 0 && out.stream) return BadField("max_tokens", "'max_tokens' 0 is not supported with 'stream': true");
  const json* prompt = Field(body, "prompt");
  if (prompt == nullptr) return BadField("prompt", "'prompt' is required: a string, a list of strings, or token ids");
  auto add_text = [&](const json& text) {
    v1::GenerateRequest g;
    g.mutable_input()->set_text(text.get<std::string>());
    *g.mutable_parameters() = p;
    out.prompts.push_back(std::move(g));
  };
  const char* kShape = "'prompt' must be a string, a list of strings, a list of token ids, or a list of such lists";
  // `where` names the list in errors: "prompt" or "prompt[i]".
  auto add_ids = [&](const json& ids, const std::string& where) -> std::optional<ApiError> {
    v1::GenerateRequest g;
    for (size_t i = 0; i < ids.size(); ++i) {
      const json& id = ids[i];
      if (!id.is_number_integer()) return BadField("prompt", kShape);
      // Range-checked before narrowing: 2^32 + 2 must not become token 2.
      const bool huge = id.is_number_unsigned() && id.get<uint64_t>() > uint64_t{INT32_MAX};
      const int64_t limit = context.vocab_size > 0 ? context.vocab_size : int64_t{INT32_MAX} + 1;
      if (huge || id.get<int64_t>() < 0 || id.get<int64_t>() >= limit) {
        const std::string allowed = context.vocab_size > 0 ? absl::StrCat("0..", context.vocab_size - 1)
                                                           : std::string("[0, vocabulary size)");
        return BadField("prompt", absl::StrCat("'", where, "[", i, "]' is ", id.dump(),
                                               ", outside the vocabulary; allowed: ", allowed));
      }
      g.mutable_input()->mutable_token_ids()->add_ids(static_cast<int32_t>(id.get<int64_t>()));
    }
    *g.mutable_parameters() = p;
    out.prompts.push_back(std::move(g));
    return std::nullopt;
  };
  if (prompt->is_string()) {
    add_text(*prompt);
  } else if (prompt->is_array() && !prompt->empty()) {
    if ((*prompt)[0].is_number_integer()) {
      if (auto e = add_ids(*prompt, "prompt")) return *e;
    } else {
      for (size_t i = 0; i < prompt->size(); ++i) {
        const json& item = (*prompt)[i];
        if (item.is_string()) {
          add_text(item);
        } else if (item.is_array() && !item.empty()) {
          if (auto e = add_ids(item, absl::StrCat("prompt[", i, "]"))) return *e;
        } else {
          return BadField("prompt", kShape);
        }
      }
    }
  } else {
    return BadField("prompt", kShape);
  }
  if (out.choices() > context.max_n) {
    return BadField("n", absl::StrCat(out.prompts.size(), " prompts × n ", out.n, " = ", out.choices(),
                                      " choices; allowed: at most ", context.max_n));
  }
  if (out.candidates() > context.max_n) {
    return BadField("best_of", absl::StrCat(out.prompts.size(), " prompts × best_of ", out.best_of, " = ",
                                            out.candidates(), " candidates; allowed: at most ", context.max_n));
  }
  return out;
}

ParseResult ParseChatRequest(const json& body, const RequestContext& context) {
  if (!body.is_object()) return BadField("", "the request body must be a JSON object");
  static const std::set<std::string> kKnown = {
      "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n", "stop",
      "seed", "presence_penalty", "frequency_penalty", "repetition_penalty", "logprobs", "top_logprobs", "stream",
      "stream_options", "user", "response_format", "use_beam_search", "length_penalty", "early_stopping",
      "ignore_eos", "min_tokens"};
  if (body.is_object() && Field(body, "best_of") != nullptr) {
    return BadField("best_of", "'best_of' applies to /v1/completions only, as in OpenAI's API; chat takes 'n'");
  }
  if (auto e = CheckFields(body, kKnown)) return *e;
  ParsedRequest out;
  out.chat = true;
  Reader r(body);
  ReadModelAndUser(r, body, out);
  v1::GenerationParameters p;
  // Unset: the router's default (0), shortened to what the context leaves.
  auto max_tokens = r.Integer("max_completion_tokens", 1, context.max_new_tokens);
  if (max_tokens) out.max_tokens_field = "max_completion_tokens";
  if (!max_tokens) max_tokens = r.Integer("max_tokens", 1, context.max_new_tokens);
  if (max_tokens) p.set_max_new_tokens(static_cast<int32_t>(*max_tokens));
  ReadSampling(r, body, context, p, out);
  out.logprobs = r.Bool("logprobs").value_or(false);
  out.top_logprobs = static_cast<int>(r.Integer("top_logprobs", 0, context.max_top_logprobs).value_or(0));
  if (r.failed()) return r.error();
  if (out.top_logprobs > 0 && !out.logprobs) return BadField("top_logprobs", "'top_logprobs' needs 'logprobs': true");
  p.set_logprobs(out.logprobs);
  p.set_top_logprobs(out.top_logprobs);
  ReadBeamSearch(r, body, p, out);
  if (r.failed()) return r.error();
  const json* messages = Field(body, "messages");
  if (messages == nullptr || !messages->is_array() || messages->empty()) {
    return BadField("messages", "'messages' is required: a non-empty list of {role, content}");
  }
  v1::GenerateRequest g;
  std::vector<std::string> given_roles;
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string where = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return BadField(where, absl::StrCat("'", where, "' must be an object {role, content}"));
    for (const auto& [key, value] : m.items()) {
      if (key != "role" && key != "content" && !value.is_null()) {
        return BadField(absl::StrCat(where, ".", key), absl::StrCat("'", where, ".", key, "' is not supported"));
      }
    }
    const json* role = Field(m, "role");
    const std::string rl = role != nullptr && role->is_string() ? role->get<std::string>() : "";
    if (rl != "user" && rl != "assistant" && rl != "system" && rl != "developer") {
      const std::string given = role == nullptr ? "missing" : role->is_string() ? "\"" + rl + "\"" : "not a string";
      return BadField(where + ".role",
                      absl::StrCat("'", where, ".role' is ", given, "; allowed: user, assistant",
                                   context.chat_system_role ? ", and system or developer as the first message" : ""));
    }
    given_roles.push_back(rl);
    auto content = Content(m, where, r);
    if (!content) return r.error();
    auto* msg = g.mutable_input()->mutable_chat()->add_messages();
    msg->set_role(rl == "assistant" ? "model" : rl == "developer" ? "system" : rl);
    msg->set_content(std::move(*content));
  }
  // The template's own rules (turns alternating from a user turn, a system message first on Gemma 3 only), said
  // with the role as the request gave it.
  std::vector<std::string_view> roles;
  for (const auto& m : g.input().chat().messages()) roles.push_back(m.role());
  if (auto e = CheckChatRoles(roles, context.chat_system_role ? ChatStyle::kGemma3 : ChatStyle::kGemma)) {
    const std::string where = absl::StrCat("messages[", e->index, "].role");
    return BadField(where, absl::StrCat("'", where, "' is \"", given_roles[e->index], "\": ", e->why));
  }
  *g.mutable_parameters() = p;
  out.prompts.push_back(std::move(g));
  return out;
}

}  // namespace gemma::openai
