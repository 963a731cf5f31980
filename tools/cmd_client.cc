// gemma client: calls a running router (generate, stream, score).
#include <grpcpp/grpcpp.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "gemma/v1/gemma.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "protos/grpc_status.h"
#include "tools/cli_common.h"
#include "tools/client_connection.h"
#include "tools/commands.h"

namespace gemma {

int ClientCommand(int argc, char** argv) {
  const char* kCmd = "client";
  if (argc < 1 || (std::string(argv[0]) != "generate" && std::string(argv[0]) != "stream" &&
                   std::string(argv[0]) != "score")) {
    if (argc >= 1 && (std::string(argv[0]) == "--help" || std::string(argv[0]) == "-h")) {
      std::printf("usage: gemma client generate|stream|score --server HOST:PORT (--prompt TEXT | --prompt-ids ...) [flags]\n");
      return 0;
    }
    const std::string given = argc < 1 ? "no call given" : absl::StrCat("unknown call \"", argv[0], "\"");
    return Fail(kCmd, absl::InvalidArgumentError(absl::StrCat(given, "; allowed: generate, stream, score")));
  }
  const std::string call = argv[0];
  Args args(std::string(kCmd) + " " + call, "--server HOST:PORT (--prompt TEXT | --prompt-ids 2,17,...) [flags]");
  AddConnectionFlags(args);
  args.Flag("prompt", "prompt text (the router prepends <bos>)")
      .Flag("prompt-ids", "prompt token ids, used as given")
      .Flag("chat", "send the prompt as one user turn of a chat", true)
      .Flag("max-new-tokens", "tokens to generate (default: the router's default)")
      .Flag("temperature", "0 = greedy (default 0)")
      .Flag("top-k", "0 = no limit")
      .Flag("top-p", "(0, 1]")
      .Flag("seed", "random seed")
      .Flag("timeout-ms", "deadline of the call (default 600000)")
      .Flag("json", "print the response as JSON (score always does)", true);
  int code;
  if (!ParseOrExit(args, argc - 1, argv + 1, kCmd, &code)) return code;
  auto connection = Connect(args);
  if (!connection.ok()) return Fail(kCmd, connection.status());
  if (args.Has("prompt") == args.Has("prompt-ids")) {
    return Fail(kCmd, absl::InvalidArgumentError("give exactly one of --prompt TEXT or --prompt-ids ID,ID,..."));
  }
  if (args.Has("chat") && args.Has("prompt-ids")) {
    return Fail(kCmd, absl::InvalidArgumentError("--chat applies to --prompt, not --prompt-ids"));
  }
  // A flag the call cannot apply is refused, not dropped: score has no sampling and generates nothing.
  for (const char* flag : {"max-new-tokens", "temperature", "top-k", "top-p", "seed"}) {
    if (call == "score" && args.Has(flag)) {
      return Fail(kCmd, absl::InvalidArgumentError(
                            absl::StrCat("--", flag, " applies to generate and stream; score generates nothing")));
    }
  }
  auto ids = args.GetIntList("prompt-ids", 0, INT32_MAX);
  auto max_new = args.GetInt("max-new-tokens", 0, 1, 1 << 20);
  auto temperature = args.GetDouble("temperature", 0.0, 0.0, 1e6);
  auto top_k = args.GetInt("top-k", 0, 0, 1 << 22);
  auto top_p = args.GetDouble("top-p", 1.0, 1e-9, 1.0);
  auto seed = args.GetInt("seed", -1, -1, INT64_MAX);
  auto timeout = args.GetInt("timeout-ms", 600000, 1, 86400000);
  for (const absl::Status& s : {ids.status(), max_new.status(), temperature.status(), top_k.status(), top_p.status(),
                                seed.status(), timeout.status()}) {
    if (!s.ok()) return Fail(kCmd, s);
  }
  v1::Input input;
  if (args.Has("prompt-ids")) {
    for (int32_t id : *ids) input.mutable_token_ids()->add_ids(id);
  } else if (args.Has("chat")) {
    auto* m = input.mutable_chat()->add_messages();
    m->set_role("user");
    m->set_content(args.Get("prompt"));
  } else {
    input.set_text(args.Get("prompt"));
  }
  auto stub = v1::Gemma::NewStub(connection->channel);
  grpc::ClientContext ctx;
  connection->Prepare(&ctx, std::chrono::milliseconds(*timeout));
  auto fail_rpc = [&](const grpc::Status& s) { return Fail(kCmd, FromGrpcStatus(s)); };

  if (call == "score") {
    v1::ScoreRequest req;
    *req.mutable_input() = input;
    v1::ScoreResponse resp;
    if (auto s = stub->Score(&ctx, req, &resp); !s.ok()) return fail_rpc(s);
    nlohmann::json out = {{"token_ids", std::vector<int>(resp.token_ids().begin(), resp.token_ids().end())},
                          {"logprobs", std::vector<float>(resp.logprobs().begin(), resp.logprobs().end())}};
    std::printf("%s\n", out.dump().c_str());
    return 0;
  }
  v1::GenerateRequest req;
  *req.mutable_input() = input;
  auto* p = req.mutable_parameters();
  p->set_max_new_tokens(static_cast<int32_t>(*max_new));
  p->set_temperature(static_cast<float>(*temperature));
  p->set_top_k(static_cast<int32_t>(*top_k));
  p->set_top_p(static_cast<float>(*top_p));
  if (*seed >= 0) p->set_seed(static_cast<uint64_t>(*seed));
  const char* reasons[] = {"unspecified", "length", "eos", "stop"};
  if (call == "generate") {
    v1::GenerateResponse resp;
    if (auto s = stub->Generate(&ctx, req, &resp); !s.ok()) return fail_rpc(s);
    if (args.Has("json")) {
      std::vector<int> tokens;
      for (const auto& t : resp.tokens()) tokens.push_back(t.id());
      nlohmann::json out = {{"text", resp.text()}, {"token_ids", tokens},
                            {"finish_reason", reasons[resp.finish_reason() % 4]}};
      std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else {
      std::printf("%s\n", resp.text().c_str());
    }
    return 0;
  }
  auto reader = stub->GenerateStream(&ctx, req);
  v1::GenerateStreamResponse event;
  std::string reason = "unspecified";
  while (reader->Read(&event)) {
    if (event.has_token()) {
      std::fputs(event.token().text_delta().c_str(), stdout);
      std::fflush(stdout);
    } else {
      reason = reasons[event.final().finish_reason() % 4];
    }
  }
  if (auto s = reader->Finish(); !s.ok()) return fail_rpc(s);
  std::printf("\n");
  if (args.Has("json")) std::printf("%s\n", nlohmann::json({{"finish_reason", reason}}).dump().c_str());
  return 0;
}

}  // namespace gemma
