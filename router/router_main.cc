// gemma-router: the public gRPC API in front of one or more worker groups.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "router/router_service.h"

ABSL_FLAG(std::string, workers, "", "comma-separated host:port of each worker group's rank 0");
ABSL_FLAG(int, port, 0, "public API port; 0: any free port");
ABSL_FLAG(std::string, port_file, "", "write the chosen port here");
ABSL_FLAG(int, max_batch_size, 64, "sequences in one step per group");
ABSL_FLAG(int, max_tokens_per_step, 512, "tokens in one step per group (decodes plus prompt chunks)");
ABSL_FLAG(int, max_queued, 256, "waiting requests per group; more get RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_new_tokens, 4096, "ceiling on a request's max_new_tokens");
ABSL_FLAG(int, max_total_tokens, 8192, "ceiling on prompt + max_new_tokens");
ABSL_FLAG(int, metrics_port, 0, "port of the Prometheus /metrics endpoint; 0: none");
ABSL_FLAG(int64_t, connect_timeout_ms, 60000, "how long to wait for each worker group at start");

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

int Fail(const std::string& message, int code = 1) {
  std::fprintf(stderr, "gemma-router: %s\n", message.c_str());
  return code;
}
}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("the public gemma-serve API: gemma-router --workers HOST:PORT[,HOST:PORT...] [--port N]");
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) return Fail(absl::StrCat("unexpected argument \"", rest[1], "\"; see --help"), 2);
  const std::string workers = absl::GetFlag(FLAGS_workers);
  if (workers.empty()) return Fail("--workers is required: host:port of each worker group's rank 0", 2);
  gemma::SchedulerLimits sched;
  sched.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  sched.max_tokens_per_step = absl::GetFlag(FLAGS_max_tokens_per_step);
  sched.max_queued = absl::GetFlag(FLAGS_max_queued);
  if (sched.max_batch_size < 1 || sched.max_tokens_per_step < 1 || sched.max_queued < 0) {
    return Fail("--max_batch_size and --max_tokens_per_step must be >= 1, --max_queued >= 0", 2);
  }
  gemma::RouterLimits limits;
  limits.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  limits.max_total_tokens = absl::GetFlag(FLAGS_max_total_tokens);
  if (limits.max_new_tokens < 1 || limits.max_total_tokens < 2) {
    return Fail("--max_new_tokens must be >= 1 and --max_total_tokens >= 2", 2);
  }
  limits.default_max_new_tokens = std::min(limits.default_max_new_tokens, limits.max_new_tokens);

  const int metrics_port = absl::GetFlag(FLAGS_metrics_port);
  auto metrics = gemma::RouterMetrics::Create(metrics_port > 0 ? absl::StrCat("0.0.0.0:", metrics_port) : "");
  if (!metrics.ok()) return Fail(std::string(metrics.status().message()));
  std::vector<std::unique_ptr<gemma::WorkerGroup>> groups;
  for (absl::string_view address : absl::StrSplit(workers, ',', absl::SkipEmpty())) {
    auto g = gemma::WorkerGroup::Connect(std::string(address), sched,
                                         std::chrono::milliseconds(absl::GetFlag(FLAGS_connect_timeout_ms)),
                                         metrics->get());
    if (!g.ok()) return Fail(std::string(g.status().message()));
    groups.push_back(std::move(*g));
  }
  for (const auto& g : groups) {
    if (g->info().vocab_size() != groups[0]->info().vocab_size() ||
        g->info().tokenizer_model() != groups[0]->info().tokenizer_model()) {
      return Fail(absl::StrCat("worker group ", g->address(), " serves a different model than ", groups[0]->address()));
    }
  }
  auto tokenizer = gemma::Tokenizer::FromBytes(groups[0]->info().tokenizer_model());
  if (!tokenizer.ok()) return Fail(absl::StrCat("the workers' tokenizer: ", tokenizer.status().message()));

  gemma::RouterService service(std::move(groups), std::move(*tokenizer), limits, metrics->get());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::StrCat("0.0.0.0:", absl::GetFlag(FLAGS_port)), grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(16 << 20);
  auto server = builder.BuildAndStart();
  if (!server || port == 0) return Fail(absl::StrCat("cannot listen on port ", absl::GetFlag(FLAGS_port)));
  server->GetHealthCheckService()->SetServingStatus(true);
  if (!absl::GetFlag(FLAGS_port_file).empty()) std::ofstream(absl::GetFlag(FLAGS_port_file)) << port << "\n";
  std::printf("gemma-router serving on port %d\n", port);
  std::fflush(stdout);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return 0;
}
