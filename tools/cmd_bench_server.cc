// gemma bench --server: a load generator against a running router. Sweeps client concurrency and reports
// time to first token, inter-token latency and end-to-end latency percentiles, and aggregate tokens/s.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "gemma/v1/gemma.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "protos/grpc_status.h"
#include "shard/checkpoint/progress.h"
#include "tools/cli_common.h"
#include "tools/client_connection.h"
#include "tools/commands.h"
#include "tools/http_stream_client.h"

namespace gemma {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct Samples {
  std::vector<double> ttft, itl, e2e;
  int64_t tokens = 0;
  int ok = 0;
  std::vector<std::string> errors;
};

// One concurrency level's samples, appended to by its client threads.
struct SharedSamples {
  absl::Mutex mu;
  Samples samples ABSL_GUARDED_BY(mu);
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

nlohmann::json Summary(const std::vector<double>& v) {
  double sum = 0;
  for (double x : v) sum += x;
  return {{"mean", v.empty() ? 0 : sum / v.size()},
          {"p50", Percentile(v, 0.5)},
          {"p90", Percentile(v, 0.9)},
          {"p99", Percentile(v, 0.99)}};
}

// One streamed request's latencies, as its tokens arrive; added to the level's samples at its end.
class RequestClock {
 public:
  void Token() {
    const auto now = Clock::now();
    if (ttft_ < 0) {
      ttft_ = Seconds(now - start_);
    } else {
      gaps_.push_back(Seconds(now - last_));
    }
    last_ = now;
    ++tokens_;
  }
  void Finish(const absl::Status& status, SharedSamples& shared) {
    const double e2e = Seconds(Clock::now() - start_);
    absl::MutexLock lock(&shared.mu);
    Samples& out = shared.samples;
    if (!status.ok()) {
      out.errors.push_back(status.ToString());
      return;
    }
    ++out.ok;
    out.tokens += tokens_;
    if (ttft_ >= 0) out.ttft.push_back(ttft_);
    out.itl.insert(out.itl.end(), gaps_.begin(), gaps_.end());
    out.e2e.push_back(e2e);
  }

 private:
  const Clock::time_point start_ = Clock::now();
  Clock::time_point last_ = start_;
  double ttft_ = -1;
  std::vector<double> gaps_;
  int64_t tokens_ = 0;
};

// One request streamed over gRPC.
void RunOne(v1::Gemma::Stub& stub, const ClientConnection& connection, const v1::GenerateRequest& request,
            SharedSamples& shared) {
  grpc::ClientContext ctx;
  connection.Prepare(&ctx, std::chrono::minutes(30));
  RequestClock clock;
  auto reader = stub.GenerateStream(&ctx, request);
  v1::GenerateStreamResponse event;
  while (reader->Read(&event)) {
    if (event.has_token() && event.token().has_token()) clock.Token();
  }
  clock.Finish(FromGrpcStatus(reader->Finish()), shared);
}

// The same over the OpenAI HTTP API: one streamed completion, a server-sent event per token.
struct HttpTarget {
  std::string host;
  int port = 0;
  std::string model;
};

void RunOneHttp(const HttpTarget& target, const v1::GenerateRequest& request, SharedSamples& shared) {
  const auto& ids = request.input().token_ids().ids();
  nlohmann::json body = {{"model", target.model},
                               {"prompt", std::vector<int32_t>(ids.begin(), ids.end())},
                               {"max_tokens", request.parameters().max_new_tokens()},
                               {"temperature", 0},
                               {"stream", true}};
  if (request.parameters().has_response_format()) {
    body["response_format"] = {{"type", request.parameters().response_format().type()}};
  }
  if (request.parameters().ignore_eos()) body["ignore_eos"] = true;
  RequestClock clock;
  const absl::Status status =
      PostAndStreamEvents(target.host, target.port, "/v1/completions", body.dump(), [&](std::string_view data) {
        // Token chunks carry a null finish_reason; the closing chunks and [DONE] do not count.
        if (data != "[DONE]" && data.find("\"finish_reason\":null") != std::string_view::npos) clock.Token();
      });
  clock.Finish(status, shared);
}

}  // namespace

int BenchServerCommand(int argc, char** argv) {
  const char* kCmd = "bench --server";
  Args args(kCmd, "HOST:PORT [--concurrency 1,4,16] [--requests N] [--prompt-tokens P] [--shared-prefix-tokens S] "
              "[--max-new-tokens M]");
  AddConnectionFlags(args);
  args.Flag("concurrency", "client concurrency levels to sweep (default 1,4,16)")
      .Flag("requests", "requests per level (default: 4 x concurrency, at least 8)")
      .Flag("prompt-tokens", "prompt length in tokens, random ids (default 64); after the shared prefix, if any")
      .Flag("shared-prefix-tokens", "every request starts with the same S tokens (a system prompt), then its own "
                                    "--prompt-tokens (default 0)")
      .Flag("max-new-tokens",
            "tokens generated per request, greedy, past <eos> as vLLM's ignore_eos for text outputs (default 64)")
      .Flag("response-format", "text (default) or json_object: every request's output constrained to a JSON object")
      .Flag("protocol", "grpc (default) or http: stream through the OpenAI HTTP API at --http-server instead")
      .Flag("http-server", "HOST:PORT of the router's HTTP API (with --protocol http; plaintext)")
      .Flag("http-model", "the model name the HTTP API serves (default: the checkpoint's shape name)")
      .Flag("json", "print one JSON object", true);
  int code;
  if (!ParseOrExit(args, argc, argv, kCmd, &code)) return code;
  auto levels = args.Has("concurrency") ? args.GetIntList("concurrency", 1, 4096) : std::vector<int32_t>{1, 4, 16};
  auto requests = args.GetInt("requests", 0, 1, 1 << 20);
  auto prompt_tokens = args.GetInt("prompt-tokens", 64, 1, 1 << 20);
  auto max_new = args.GetInt("max-new-tokens", 64, 1, 1 << 20);
  auto shared_prefix = args.GetInt("shared-prefix-tokens", 0, 0, 1 << 20);
  for (const absl::Status& s : {levels.status(), requests.status(), prompt_tokens.status(), max_new.status(),
                                shared_prefix.status()}) {
    if (!s.ok()) return Fail(kCmd, s);
  }
  if (levels->empty()) return Fail(kCmd, absl::InvalidArgumentError("--concurrency needs at least one level"));
  const std::string protocol = args.Has("protocol") ? args.Get("protocol") : "grpc";
  const std::string format = args.Has("response-format") ? args.Get("response-format") : "text";
  if (format != "text" && format != "json_object") {
    return Fail(kCmd, absl::InvalidArgumentError("--response-format \"" + format + "\" is invalid; allowed: text, json_object"));
  }
  if (protocol != "grpc" && protocol != "http") {
    return Fail(kCmd, absl::InvalidArgumentError("--protocol \"" + protocol + "\" is invalid; allowed: grpc, http"));
  }
  HttpTarget http;
  if (protocol == "http") {
    const std::string address = args.Has("http-server") ? args.Get("http-server") : "";
    const size_t colon = address.rfind(':');
    if (colon == std::string::npos || colon == 0 || std::atoi(address.c_str() + colon + 1) <= 0) {
      return Fail(kCmd, absl::InvalidArgumentError("--protocol http needs --http-server HOST:PORT"));
    }
    http.host = address.substr(0, colon);
    http.port = std::atoi(address.c_str() + colon + 1);
  } else if (args.Has("http-server")) {
    return Fail(kCmd, absl::InvalidArgumentError("--http-server needs --protocol http"));
  }
  auto connection = Connect(args);
  if (!connection.ok()) return Fail(kCmd, connection.status());
  auto stub = v1::Gemma::NewStub(connection->channel);
  v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    connection->Prepare(&ctx, std::chrono::seconds(30));
    if (auto s = stub->GetModelInfo(&ctx, {}, &info); !s.ok()) return Fail(kCmd, FromGrpcStatus(s));
  }
  if (*shared_prefix + *prompt_tokens + *max_new > info.max_context()) {
    return Fail(kCmd, absl::InvalidArgumentError(absl::StrCat(
                          "--shared-prefix-tokens + --prompt-tokens + --max-new-tokens is ",
                          *shared_prefix + *prompt_tokens + *max_new, "; the server allows ", info.max_context())));
  }
  http.model = args.Has("http-model") ? args.Get("http-model") : info.name();
  std::mt19937 rng(7);
  auto random_id = [&] { return 4 + static_cast<int32_t>(rng() % (info.vocab_size() - 4)); };
  std::vector<int32_t> prefix = {static_cast<int32_t>(info.bos_id())};
  for (int64_t i = 0; i < *shared_prefix; ++i) prefix.push_back(random_id());
  auto make_request = [&] {
    v1::GenerateRequest r;
    auto* ids = r.mutable_input()->mutable_token_ids();
    ids->mutable_ids()->Add(prefix.begin(), prefix.end());
    for (int64_t i = 1; i < *prompt_tokens; ++i) ids->add_ids(random_id());
    r.mutable_parameters()->set_max_new_tokens(static_cast<int32_t>(*max_new));
    // Every request generates max_new tokens, as vLLM's load tests ask (ignore_eos): the figures then do not
    // depend on where random prompts happen to draw <eos>. A structured output ends where its grammar does.
    if (format != "text") {
      r.mutable_parameters()->mutable_response_format()->set_type(format);
    } else {
      r.mutable_parameters()->set_ignore_eos(true);
    }
    return r;
  };

  nlohmann::json results = nlohmann::json::array();
  int64_t total_requests = 0;
  for (int32_t c : *levels) total_requests += *requests > 0 ? *requests : std::max(8, 4 * c);
  Progress progress("load sweep (requests)", total_requests);
  std::atomic<int64_t> finished{0};
  for (int32_t c : *levels) {
    const int64_t n = *requests > 0 ? *requests : std::max(8, 4 * c);
    std::vector<v1::GenerateRequest> batch;
    for (int64_t i = 0; i < n; ++i) batch.push_back(make_request());
    SharedSamples shared;
    std::atomic<int64_t> next{0};
    const auto start = Clock::now();
    std::vector<std::thread> clients;
    for (int t = 0; t < c; ++t) {
      clients.emplace_back([&] {
        for (int64_t i; (i = next++) < n;) {
          if (protocol == "http") {
            RunOneHttp(http, batch[i], shared);
          } else {
            RunOne(*stub, *connection, batch[i], shared);
          }
          progress.Update(++finished);
        }
      });
    }
    for (auto& t : clients) t.join();
    const double wall = Seconds(Clock::now() - start);
    Samples samples;
    {
      absl::MutexLock lock(&shared.mu);  // the clients have joined; taken for the analysis
      samples = std::move(shared.samples);
    }
    results.push_back({{"concurrency", c},
                       {"requests", n},
                       {"ok", samples.ok},
                       {"errors", samples.errors.size()},
                       {"first_error", samples.errors.empty() ? "" : samples.errors.front()},
                       {"generated_tokens", samples.tokens},
                       {"seconds", wall},
                       {"tokens_per_s", samples.tokens / wall},
                       {"ttft_s", Summary(samples.ttft)},
                       {"inter_token_s", Summary(samples.itl)},
                       {"e2e_s", Summary(samples.e2e)}});
  }
  progress.Finish();
  if (args.Has("json")) {
    nlohmann::json out = {{"server", args.Get("server")},
                          {"protocol", protocol},
                          {"response_format", format},
                          {"model", info.name()},
                          {"prompt_tokens", *prompt_tokens},
                          {"shared_prefix_tokens", *shared_prefix},
                          {"max_new_tokens", *max_new},
                          {"levels", results}};
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    std::printf("%s: model %s, prompt %lld tokens after a shared prefix of %lld, %lld new tokens per request "
                "(greedy)\n",
                args.Get("server").c_str(), info.name().c_str(), static_cast<long long>(*prompt_tokens),
                static_cast<long long>(*shared_prefix), static_cast<long long>(*max_new));
    std::printf("%5s %6s %10s | %-26s | %-26s | %-26s\n", "conc", "ok", "tokens/s", "TTFT p50/p90/p99 ms",
                "inter-token p50/p90/p99 ms", "end-to-end p50/p90/p99 s");
    for (const auto& r : results) {
      auto ms = [&](const char* key, const char* p) { return 1000 * r[key][p].get<double>(); };
      std::printf("%5d %6d %10.2f | %8.1f %8.1f %8.1f | %8.2f %8.2f %8.2f | %8.2f %8.2f %8.2f\n",
                  r["concurrency"].get<int>(), r["ok"].get<int>(), r["tokens_per_s"].get<double>(),
                  ms("ttft_s", "p50"), ms("ttft_s", "p90"), ms("ttft_s", "p99"), ms("inter_token_s", "p50"),
                  ms("inter_token_s", "p90"), ms("inter_token_s", "p99"), r["e2e_s"]["p50"].get<double>(),
                  r["e2e_s"]["p90"].get<double>(), r["e2e_s"]["p99"].get<double>());
      if (r["errors"].get<size_t>() > 0) {
        std::printf("      %zu failed, first: %s\n", r["errors"].get<size_t>(), r["first_error"].get<std::string>().c_str());
      }
    }
  }
  for (const auto& r : results) {
    if (r["errors"].get<size_t>() > 0) return 1;
  }
  return 0;
}

}  // namespace gemma
