// gemma-router: the public gRPC API in front of one or more worker groups.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <thread>
#include <random>

#include <sys/resource.h>
#include <unistd.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "protos/grpc_listen.h"
#include "router/group_discovery.h"
#include "router/http/http_server.h"
#include "router/openai/openai_service.h"
#include "router/admin_service.h"
#include "router/router_service.h"
#include "router/tls_credentials.h"
#include "tools/flags_help.h"

ABSL_FLAG(std::string, workers, "", "comma-separated host:port of each worker group's rank 0");
ABSL_FLAG(std::string, workers_dns, "",
          "HOST:PORT where HOST resolves to every group's rank 0 (a headless service); re-resolved to add and drop groups");
ABSL_FLAG(int64_t, dns_refresh_ms, 10000, "how often --workers_dns is resolved again");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain of the public port");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of the public port");
ABSL_FLAG(bool, plaintext, false, "serve the public port without TLS (only when asked for)");
ABSL_FLAG(std::string, api_keys_file, "",
          "file with one API key per line; when set, calls need the metadata \"authorization: Bearer <key>\"");
ABSL_FLAG(int, max_message_bytes, 4 << 20,
          "largest request message accepted (gRPC and HTTP bodies), and largest unary Score answer sent (larger "
          "ones get RESOURCE_EXHAUSTED, over HTTP 413; ScoreStream sends activations one per message)");
ABSL_FLAG(int64_t, max_activation_bytes, int64_t{256} << 20,
          "activation data one Score request may ask for (points x positions x hidden x dtype size); more get "
          "RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_activation_bytes_in_flight, 0,
          "activation and logits bytes all Score requests in flight may hold at once; one that would pass it gets "
          "RESOURCE_EXHAUSTED at once; 0: 4 x --max_activation_bytes");
ABSL_FLAG(int, max_streams_per_connection, 128, "concurrent calls on one client connection; more wait their turn");
ABSL_FLAG(int, port, 0, "public API port; 0: any free port");
ABSL_FLAG(int, http_port, 0,
          "port of the OpenAI-compatible HTTP API (same TLS and API keys as --port); 0: none");
ABSL_FLAG(std::string, http_port_file, "", "write the HTTP port here (with --http_port)");
ABSL_FLAG(std::string, served_model_name, "",
          "the model name HTTP clients give (\"model\") and /v1/models lists; default: the checkpoint's shape name");
ABSL_FLAG(int64_t, http_timeout_s, 30,
          "an HTTP client that sends its request, or reads its reply, slower than this (seconds idle) is dropped");
ABSL_FLAG(int, health_port, 0,
          "plaintext port with only grpc.health.v1 (Kubernetes probes cannot speak TLS); 0: none");
ABSL_FLAG(std::string, bind_host, "0.0.0.0", "address the public port listens on (127.0.0.1: this machine only)");
ABSL_FLAG(std::string, port_file, "", "write the chosen port here");
ABSL_FLAG(int, max_batch_size, 64, "sequences in one step per group");
ABSL_FLAG(int, max_tokens_per_step, 512, "tokens in one step per group (decodes plus prompt chunks)");
ABSL_FLAG(int, max_queued, 256, "waiting requests per group; more get RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_new_tokens, 4096, "ceiling on a request's max_new_tokens");
ABSL_FLAG(int, max_total_tokens, 0, "ceiling on prompt + max_new_tokens; 0 (default): the groups' context (their --max_model_len, else the model's)");
ABSL_FLAG(std::string, overlap_steps, "on",
          "on: while a group decodes, the next step is sent before the last one has answered, hiding the router's "
          "share of each token (off: one step at a time)");
ABSL_FLAG(std::string, prefix_cache, "on",
          "on: a request reuses the KV blocks of the longest prompt prefix a group has cached (off: never)");
ABSL_FLAG(int, metrics_port, 0, "port of the Prometheus /metrics endpoint, on --bind_host; 0: none");
ABSL_FLAG(int64_t, connect_timeout_ms, 60000, "how long to wait for each worker group at start");
ABSL_FLAG(int, peer_port, 0,
          "plaintext port other routers forward requests to (keep it inside the cluster: it checks no API key); "
          "0: none, and no router can forward here");
ABSL_FLAG(std::string, advertise_address, "",
          "HOST:PORT other routers reach --peer_port at (in Kubernetes the pod IP); default: this host's name");
ABSL_FLAG(int64_t, lease_ttl_ms, 5000,
          "a group this router schedules may be taken over by another router this long after this one stops renewing");
ABSL_FLAG(int64_t, drain_timeout_ms, 10000,
          "on SIGTERM: how long running requests may still take; queued ones are answered UNAVAILABLE at once");

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

int Fail(const std::string& message, int code = 1) {
  std::fprintf(stderr, "gemma-router: %s\n", message.c_str());
  return code;
}
}  // namespace

int main(int argc, char** argv) {
  gemma::ListFlagsOfFolderInHelp("router/");
  absl::SetProgramUsageMessage(
      "the public gemma-serve API: gemma-router (--workers HOST:PORT[,...] | --workers_dns HOST:PORT)\n"
      "  (--tls_cert FILE --tls_key FILE | --plaintext) [--api_keys_file FILE] [--port N]");
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  // Every HTTP stream holds a socket: the soft limit on open files (often 1,024) is raised to the hard one.
  if (rlimit files{}; ::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &files);
  }
  if (rest.size() > 1) return Fail(absl::StrCat("unexpected argument \"", rest[1], "\"; see --help"), 2);
  const std::string workers = absl::GetFlag(FLAGS_workers);
  const std::string workers_dns = absl::GetFlag(FLAGS_workers_dns);
  if (workers.empty() == workers_dns.empty()) {
    return Fail("give exactly one of --workers HOST:PORT,... (each group's rank 0) or --workers_dns HOST:PORT", 2);
  }
  if (absl::GetFlag(FLAGS_dns_refresh_ms) < 100) return Fail("--dns_refresh_ms must be >= 100", 2);
  if (absl::GetFlag(FLAGS_drain_timeout_ms) < 0) return Fail("--drain_timeout_ms must be >= 0", 2);
  const int64_t lease_ttl = absl::GetFlag(FLAGS_lease_ttl_ms);
  if (lease_ttl < 300 || lease_ttl > 600000) return Fail("--lease_ttl_ms must be in 300..600000", 2);
  const int peer_port = absl::GetFlag(FLAGS_peer_port);
  if (peer_port < 0 || peer_port > 65535) return Fail("--peer_port must be in 0..65535", 2);
  std::string advertise = absl::GetFlag(FLAGS_advertise_address);
  if (!advertise.empty() && peer_port == 0) return Fail("--advertise_address needs --peer_port", 2);
  if (!advertise.empty() && !gemma::ParseHostPort(advertise).ok()) {
    return Fail(absl::StrCat("--advertise_address \"", advertise, "\" is not HOST:PORT"), 2);
  }
  if (advertise.empty() && peer_port > 0) {
    char host[256] = {};
    ::gethostname(host, sizeof(host) - 1);
    advertise = absl::StrCat(host, ":", peer_port);
  }
  const int max_message = absl::GetFlag(FLAGS_max_message_bytes);
  const int max_streams = absl::GetFlag(FLAGS_max_streams_per_connection);
  if (max_message < 1024 || max_message > (256 << 20)) return Fail("--max_message_bytes must be in 1024..268435456", 2);
  if (max_streams < 1) return Fail("--max_streams_per_connection must be >= 1", 2);
  auto credentials = gemma::PublicServerCredentials(absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key),
                                                    absl::GetFlag(FLAGS_plaintext));
  if (!credentials.ok()) return Fail(std::string(credentials.status().message()), 2);
  gemma::ApiKeys keys;
  if (!absl::GetFlag(FLAGS_api_keys_file).empty()) {
    auto loaded = gemma::ApiKeys::FromFile(absl::GetFlag(FLAGS_api_keys_file));
    if (!loaded.ok()) return Fail(std::string(loaded.status().message()), 2);
    keys = std::move(*loaded);
  }
  const gemma::ApiKeys http_keys = keys;
  const int http_port = absl::GetFlag(FLAGS_http_port);
  if (http_port < 0 || http_port > 65535) return Fail("--http_port must be in 0..65535 (0: no HTTP API)", 2);
  if (absl::GetFlag(FLAGS_http_timeout_s) < 1 || absl::GetFlag(FLAGS_http_timeout_s) > 3600) {
    return Fail("--http_timeout_s must be in 1..3600", 2);
  }
  gemma::SchedulerLimits sched;
  sched.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  sched.max_tokens_per_step = absl::GetFlag(FLAGS_max_tokens_per_step);
  sched.max_queued = absl::GetFlag(FLAGS_max_queued);
  if (sched.max_batch_size < 1 || sched.max_tokens_per_step < 1 || sched.max_queued < 0) {
    return Fail("--max_batch_size and --max_tokens_per_step must be >= 1, --max_queued >= 0", 2);
  }
  const std::string prefix_cache_flag = absl::GetFlag(FLAGS_prefix_cache);
  if (prefix_cache_flag != "on" && prefix_cache_flag != "off") {
    return Fail(absl::StrCat("--prefix_cache \"", prefix_cache_flag, "\" is invalid; allowed: on, off"), 2);
  }
  const std::string overlap_flag = absl::GetFlag(FLAGS_overlap_steps);
  if (overlap_flag != "on" && overlap_flag != "off") {
    return Fail(absl::StrCat("--overlap_steps \"", overlap_flag, "\" is invalid; allowed: on, off"), 2);
  }
  gemma::GroupOptions group_options;
  group_options.limits = sched;
  group_options.prefix_cache = prefix_cache_flag == "on";
  group_options.overlap_steps = overlap_flag == "on";
  const std::string router_id = group_options.lease.router_id;
  group_options.lease.router_id = router_id;
  group_options.lease.advertise = advertise;
  group_options.lease.ttl = std::chrono::milliseconds(lease_ttl);
  gemma::RouterLimits limits;
  limits.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  const int max_total_tokens = absl::GetFlag(FLAGS_max_total_tokens);
  if (max_total_tokens != 0) limits.max_total_tokens = max_total_tokens;
  if (limits.max_new_tokens < 1 || max_total_tokens < 0 || max_total_tokens == 1) {
    return Fail("--max_new_tokens must be >= 1 and --max_total_tokens 0 (the model's context) or >= 2", 2);
  }
  limits.default_max_new_tokens = std::min(limits.default_max_new_tokens, limits.max_new_tokens);
  limits.max_activation_bytes = absl::GetFlag(FLAGS_max_activation_bytes);
  if (limits.max_activation_bytes < 0 || limits.max_activation_bytes > (int64_t{1} << 30)) {
    // One activation is one protobuf bytes field of a stream message: protobuf refuses 2 GiB.
    return Fail("--max_activation_bytes must be 0 (no activations) to 1073741824 (1 GiB)", 2);
  }
  limits.max_message_bytes = max_message;
  auto in_flight = gemma::ResolveActivationBytesInFlight(absl::GetFlag(FLAGS_max_activation_bytes_in_flight),
                                                        limits.max_activation_bytes);
  if (!in_flight.ok()) return Fail(std::string(in_flight.status().message()), 2);

  const int metrics_port = absl::GetFlag(FLAGS_metrics_port);
  // On the public port's host, as the HTTP API and the peer port are (--health_port, for probes, stays on every
  // interface).
  auto metrics = gemma::RouterMetrics::Create(
      metrics_port > 0 ? absl::StrCat(absl::GetFlag(FLAGS_bind_host), ":", metrics_port) : "");
  if (!metrics.ok()) return Fail(std::string(metrics.status().message()));
  gemma::GroupSet groups;
  std::unique_ptr<gemma::GroupDiscovery> discovery;
  if (!workers.empty()) {
    for (absl::string_view address : absl::StrSplit(workers, ',', absl::SkipEmpty())) {
      auto g = gemma::WorkerGroup::Connect(std::string(address), group_options,
                                           std::chrono::milliseconds(absl::GetFlag(FLAGS_connect_timeout_ms)),
                                           metrics->get(), /*wait_for_ready=*/true);
      if (!g.ok()) return Fail(std::string(g.status().message()));
      if (auto s = groups.Add(std::move(*g)); !s.ok()) return Fail(std::string(s.message()));
    }
  } else {
    if (auto spec = gemma::ParseHostPort(workers_dns); !spec.ok()) {
      return Fail(absl::StrCat("--workers_dns: ", spec.status().message()), 2);
    }
    discovery = std::make_unique<gemma::GroupDiscovery>(
        [workers_dns] { return gemma::ResolveAll(workers_dns); },
        [&](const std::string& address) {
          // Not waiting: the name also lists ranks that are no leader, and leaders still loading their weights.
          return gemma::WorkerGroup::Connect(address, group_options, std::chrono::seconds(3), metrics->get(), false);
        },
        &groups, std::chrono::milliseconds(absl::GetFlag(FLAGS_dns_refresh_ms)));
    discovery->Start();
  }

  gemma::PeerForwarder forwarder(router_id);
  // One budget for both services: forwarded calls hold router memory as much as the public port's.
  gemma::ActivationBudget activation_budget(*in_flight, [m = metrics->get()](int64_t bytes) {
    m->ActivationBytesInFlight(bytes);
  });
  gemma::AdminService admin(&groups, keys);
  gemma::RouterService service(&groups, limits, std::move(keys), metrics->get(), gemma::ServiceRole::kPublic,
                               &forwarder, &activation_budget);
  gemma::RouterService peer_service(&groups, limits, gemma::ApiKeys(), metrics->get(), gemma::ServiceRole::kPeer,
                                    nullptr, &activation_budget);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  gemma::ListenExclusively(builder, absl::StrCat(absl::GetFlag(FLAGS_bind_host), ":", absl::GetFlag(FLAGS_port)),
                           *credentials, &port);
  builder.RegisterService(&service);
  builder.RegisterService(&admin);
  builder.SetMaxReceiveMessageSize(max_message);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, max_streams);
  auto server = builder.BuildAndStart();
  if (!server || port == 0) return Fail(absl::StrCat("cannot listen on ", absl::GetFlag(FLAGS_bind_host), ":", absl::GetFlag(FLAGS_port)));
  std::unique_ptr<grpc::Server> peer_server;
  if (peer_port > 0) {
    grpc::ServerBuilder pb;
    gemma::ListenExclusively(pb, absl::StrCat(absl::GetFlag(FLAGS_bind_host), ":", peer_port),
                             grpc::InsecureServerCredentials());
    pb.RegisterService(&peer_service);
    pb.SetMaxReceiveMessageSize(max_message);
    // Peers ping a relayed call that sends nothing for a while (a unary call that runs long): gRPC's default policy
    // would answer such pings with GOAWAY and cut the call.
    pb.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
    pb.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
    peer_server = pb.BuildAndStart();
    if (!peer_server) return Fail(absl::StrCat("cannot listen on peer port ", peer_port));
  }
  std::unique_ptr<grpc::Server> health_server;
  if (const int health_port = absl::GetFlag(FLAGS_health_port); health_port > 0) {
    grpc::ServerBuilder hb;
    gemma::ListenExclusively(hb, absl::StrCat("0.0.0.0:", health_port), grpc::InsecureServerCredentials());
    health_server = hb.BuildAndStart();
    if (!health_server) return Fail(absl::StrCat("cannot listen on health port ", health_port));
  }
  // The HTTP API admits through the same path as the gRPC one; its loop thread serves every HTTP connection.
  gemma::RequestAdmission http_admission(&groups, limits, metrics->get());
  gemma::openai::OpenAiService openai(&http_admission, &http_keys, absl::GetFlag(FLAGS_served_model_name));
  std::unique_ptr<gemma::http::Server> http_server;
  if (http_port > 0) {
    gemma::http::ServerOptions ho;
    ho.bind_host = absl::GetFlag(FLAGS_bind_host);
    ho.port = http_port;
    if (!absl::GetFlag(FLAGS_plaintext)) {
      ho.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
      ho.tls_key_file = absl::GetFlag(FLAGS_tls_key);
    }
    ho.max_body_bytes = static_cast<size_t>(max_message);
    ho.too_large_body = [&openai](std::string_view path, size_t bytes, size_t limit) {
      return openai.TooLargeBody(path, bytes, limit);
    };
    ho.io_timeout = std::chrono::seconds(absl::GetFlag(FLAGS_http_timeout_s));
    auto started = gemma::http::Server::Start(ho, [&openai](std::shared_ptr<gemma::http::Exchange> exchange) {
      openai.Handle(std::move(exchange));
    });
    if (!started.ok()) return Fail(std::string(started.status().message()));
    http_server = std::move(*started);
    if (!absl::GetFlag(FLAGS_http_port_file).empty()) {
      std::ofstream(absl::GetFlag(FLAGS_http_port_file)) << http_server->port() << "\n";
    }
  }
  if (!absl::GetFlag(FLAGS_port_file).empty()) std::ofstream(absl::GetFlag(FLAGS_port_file)) << port << "\n";
  std::printf("gemma-router serving on port %d\n", port);
  if (http_server) std::printf("gemma-router serving HTTP (OpenAI API) on port %d\n", http_server->port());
  std::fflush(stdout);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  // Serving (for readiness probes) exactly while some group can take requests.
  bool serving = false;
  server->GetHealthCheckService()->SetServingStatus(false);
  if (health_server) health_server->GetHealthCheckService()->SetServingStatus(false);
  while (!g_stop) {
    if ((groups.healthy() > 0) != serving) {
      serving = !serving;
      server->GetHealthCheckService()->SetServingStatus(serving);
      if (health_server) health_server->GetHealthCheckService()->SetServingStatus(serving);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  // Stopping: readiness goes first, so no new traffic is sent here; new calls and queued requests are answered
  // UNAVAILABLE (retryable elsewhere), running ones get the drain time, and what is left then is answered
  // UNAVAILABLE too. Only then does the server stop: every handler has its answer, none waits for a group.
  server->GetHealthCheckService()->SetServingStatus(false);
  if (health_server) health_server->GetHealthCheckService()->SetServingStatus(false);
  discovery.reset();  // adds no group while the others stop
  groups.Drain();
  const auto drain_end = std::chrono::steady_clock::now() + std::chrono::milliseconds(absl::GetFlag(FLAGS_drain_timeout_ms));
  // Calls relayed to a peer run there, but their clients are connected here: they too get the drain time.
  while ((!groups.idle() || forwarder.in_flight() > 0) && std::chrono::steady_clock::now() < drain_end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  groups.Stop();  // gives the groups' leases back: other routers take them over at once
  http_server.reset();  // every HTTP request has its answer now: the loop stops
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (peer_server) peer_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (health_server) health_server->Shutdown();
  return 0;
}
