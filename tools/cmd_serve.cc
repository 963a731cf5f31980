// gemma serve: a local cluster (G worker groups of N ranks, and a router) on one machine; gemma client talks to it.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tools/local_model.h"
#include "tools/cli_common.h"
#include "tools/commands.h"
#include "tools/default_model.h"
#include "tools/free_port.h"
#include "worker/child_process.h"

namespace gemma {
namespace {

// How long Ctrl-C lets running requests finish: the workers and the router drain for this long at most.
constexpr std::chrono::milliseconds kDrain{10000};
// After the drain a worker waits for a quiet second and shuts its server down within 2 s; the rest is the exit.
constexpr std::chrono::milliseconds kStopMargin{5000};

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

// A sibling binary: beside this executable (installed), else where the build put it.
std::string Binary(const char* name, const char* build_path) {
  const std::string beside = (std::filesystem::read_symlink("/proc/self/exe").parent_path() / name).string();
  return std::filesystem::exists(beside) ? beside : build_path;
}

// Ctrl-C reaches gemma serve alone, which stops its children itself. -1 when it cannot start (said on stderr).
pid_t Spawn(const std::string& binary, const std::vector<std::string>& args) {
  // A serve that is killed outright (or whose thread that spawned is gone) takes its cluster with it: the children
  // get SIGTERM, and drain and stop as on Ctrl-C.
  auto pid = SpawnChild(binary, args,
                        {.own_process_group = true, .die_with_parent = true, .parent_death_signal = SIGTERM});
  if (!pid.ok()) {
    std::fprintf(stderr, "gemma serve: %s\n", std::string(pid.status().message()).c_str());
    return -1;
  }
  return *pid;
}

int ReadPort(const std::string& path, const std::vector<pid_t>& watch, std::chrono::seconds wait) {
  const auto end = std::chrono::steady_clock::now() + wait;
  while (std::chrono::steady_clock::now() < end && !g_stop) {
    std::ifstream in(path);
    int port = 0;
    if (in >> port && port > 0) return port;
    for (pid_t pid : watch) {
      if (::waitpid(pid, nullptr, WNOHANG) == pid) return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return 0;
}

}  // namespace

int ServeCommand(int argc, char** argv) {
  const char* kCmd = "serve";
  Args args(kCmd, "[--model DIR] [--tp N] [--replicas G] [--port P] [--http-port P] [--device cpu|cuda]");
  args.Flag("model", "checkpoint directory (default: the embedded tiny model)")
      .Flag("tp", "ranks per worker group, 1..8 (default 1)")
      .Flag("replicas", "worker groups, 1..16 (default 1)")
      .Flag("port", "the router's public port (default: any free port)")
      .Flag("http-port", "also serve the OpenAI-compatible HTTP API on this port (0: any free port; default: none)")
      .Flag("metrics-port", "the router's Prometheus /metrics on this port, beside its API (default: none)")
      .Flag("served-model-name", "the model name HTTP clients give (default: the checkpoint's shape name)")
      .Flag("threads", "compute threads per rank (default: cores / (tp * replicas))")
      .Flag("kv-cache-mb", "KV cache per rank in MiB; 0 (default): 1024 on the CPU, planned from "
                           "--gpu-memory-fraction on GPUs")
      .Flag("gpu-memory-fraction", "with --device cuda: the share of each GPU a rank keeps within, (0, 1] (default 0.9)")
      .Flag("tls-cert", "PEM certificate of the public port; with --tls-key it listens on every interface over TLS")
      .Flag("tls-key", "PEM private key of the public port")
      .Flag("api-keys-file", "file of API keys, one per line; calls then need \"authorization: Bearer <key>\"")
      .Flag("prefix-cache", "on (default): requests reuse the KV blocks of a cached prompt prefix; off: never")
      .Flag("overlap-steps", "on (default): while decoding, the router sends each step before the last has answered");
  DeclareDeviceFlags(args, "cpu (default) or cuda: group g's rank r uses GPU g * tp + r");
  int code;
  if (!ParseOrExit(args, argc, argv, kCmd, &code)) return code;
  auto tp = args.GetInt("tp", 1, 1, 8);
  auto replicas = args.GetInt("replicas", 1, 1, 16);
  auto port = args.GetInt("port", 0, 0, 65535);
  auto http_port = args.GetInt("http-port", -1, 0, 65535);
  auto metrics_port = args.GetInt("metrics-port", 0, 1, 65535);
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  for (const absl::Status& s :
       {tp.status(), replicas.status(), port.status(), http_port.status(), metrics_port.status()}) {
    if (!s.ok()) return Fail(kCmd, s);
  }
  auto threads = args.GetInt("threads", std::max<int64_t>(1, cores / (*tp * *replicas)), 1, 4096);
  if (!threads.ok()) return Fail(kCmd, threads.status());
  // 0: the worker's own default (1 GiB on the CPU; on a GPU, planned from the fraction).
  auto kv_mb = args.GetInt("kv-cache-mb", 0, 0, int64_t{1} << 24);
  if (!kv_mb.ok()) return Fail(kCmd, kv_mb.status());
  auto gpu_fraction = args.GetDouble("gpu-memory-fraction", 0.9, 0, 1);
  if (gpu_fraction.ok() && *gpu_fraction <= 0) {
    gpu_fraction = absl::InvalidArgumentError(absl::StrCat("--gpu-memory-fraction \"", args.Get("gpu-memory-fraction"),
                                                           "\" is invalid; allowed: more than 0, at most 1"));
  }
  if (!gpu_fraction.ok()) return Fail(kCmd, gpu_fraction.status());
  auto device_choice = DeviceChoiceFromFlags(args);
  if (!device_choice.ok()) return Fail(kCmd, device_choice.status());
  const std::string& device = device_choice->device;
  const std::string overlap_steps = args.Get("overlap-steps", "on");
  if (overlap_steps != "on" && overlap_steps != "off") {
    return Fail(kCmd, absl::InvalidArgumentError("--overlap-steps \"" + overlap_steps + "\" is invalid; allowed: on, off"));
  }
  const std::string prefix_cache = args.Get("prefix-cache", "on");
  if (prefix_cache != "on" && prefix_cache != "off") {
    return Fail(kCmd, absl::InvalidArgumentError("--prefix-cache \"" + prefix_cache + "\" is invalid; allowed: on, off"));
  }
  std::string model = args.Get("model");
  if (model.empty()) {
    auto d = EnsureDefaultModel();
    if (!d.ok()) return Fail(kCmd, d.status());
    model = *d;
  }
  char tmpl[] = "/tmp/gemma-serve-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return Fail(kCmd, absl::InternalError("cannot create a temporary directory"));
  const std::string run_dir = tmpl;
  const std::string worker_bin = Binary("gemma-worker", GEMMA_WORKER_BINARY);
  const std::string router_bin = Binary("gemma-router", GEMMA_ROUTER_BINARY);
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  // Its terminal closed: stop the cluster as on Ctrl-C, unless started to outlive it (nohup ignores SIGHUP).
  if (std::signal(SIGHUP, SIG_IGN) != SIG_IGN) std::signal(SIGHUP, OnSignal);

  std::vector<pid_t> children;
  std::vector<std::string> groups;
  pid_t router = -1;
  // A cluster that is running gets its drain; one that failed has nothing worth waiting for. The router stops
  // first: it drains its running requests while the workers still answer them, after which the workers have none
  // (stopped together, a worker's drain could end before the router's and fail the requests it still held).
  auto stop_all = [&](int exit_code, std::chrono::milliseconds grace = std::chrono::seconds(2)) {
    if (router > 0 && std::find(children.begin(), children.end(), router) != children.end()) {
      StopChildren({router}, grace);
      std::erase(children, router);
    }
    StopChildren(children, grace);
    std::filesystem::remove_all(run_dir);
    return exit_code;
  };
  // NCCL's bootstrap and proxy sockets listen on the interface NCCL picks, not lo where any other exists: the
  // workers inherit lo, so nothing of a local cluster is reachable from another machine (unless set already).
  if (device == "cuda") ::setenv("NCCL_SOCKET_IFNAME", "=lo", /*overwrite=*/0);  // '=': exactly lo, not a prefix
  for (int g = 0; g < *replicas; ++g) {
    const std::string port_file = absl::StrCat(run_dir, "/group", g, ".port");
    const std::string peer = std::to_string(FreeLoopbackPort());
    std::vector<pid_t> group;
    for (int r = 0; r < *tp; ++r) {
      std::vector<std::string> worker_args = {"--model=" + model, "--kv_cache_mb=" + std::to_string(*kv_mb),
                                              absl::StrCat("--rank=", r), absl::StrCat("--world_size=", *tp),
                                              "--peer_port=" + peer, "--leader=127.0.0.1:" + peer,
                                              // Only the router is reached from outside; the workers answer it
                                              // over loopback.
                                              "--listen_host=127.0.0.1",
                                              "--port_file=" + port_file, absl::StrCat("--threads=", *threads),
                                              // The groups share a host name: their metrics need names apart.
                                              absl::StrCat("--group_name=group-", g),
                                              absl::StrCat("--drain_timeout_ms=", kDrain.count()),
                                              "--weights=" + device_choice->weights,
                                              absl::StrCat("--int4_group_size=", device_choice->int4_group_size),
                                              "--kv_cache_dtype=" + device_choice->kv_cache_dtype,
                                              "--activations=" + device_choice->activations};
      if (device == "cuda") {
        worker_args.insert(worker_args.end(), {"--device=cuda", "--precision=" + device_choice->precision,
                                               absl::StrCat("--cuda_device=", g * *tp + r),
                                               absl::StrCat("--gpu_memory_fraction=", *gpu_fraction)});
        // Given only when asked for: the worker's own default reserves slots as its adapters need.
        if (args.Has("gpu-lora-slots")) {
          worker_args.push_back(absl::StrCat("--gpu_lora_slots=", device_choice->gpu_lora_slots));
        }
        if (args.Has("gpu-lora-max-rank")) {
          worker_args.push_back(absl::StrCat("--gpu_lora_max_rank=", device_choice->gpu_lora_max_rank));
        }
      }
      group.push_back(Spawn(worker_bin, worker_args));
      if (group.back() < 0) {
        group.pop_back();
        children.insert(children.end(), group.begin(), group.end());
        return stop_all(1);
      }
    }
    children.insert(children.end(), group.begin(), group.end());
    const int worker_port = ReadPort(port_file, group, std::chrono::seconds(600));
    if (worker_port <= 0) {
      if (g_stop) return stop_all(0);
      std::fprintf(stderr, "gemma serve: worker group %d did not start (see its messages above)\n", g);
      return stop_all(1);
    }
    groups.push_back(absl::StrCat("127.0.0.1:", worker_port));
  }
  std::string workers;
  for (const auto& g : groups) workers += (workers.empty() ? "" : ",") + g;
  const std::string router_port_file = run_dir + "/router.port";
  // Without TLS the local cluster stays on this machine: plaintext never leaves loopback.
  const bool tls = args.Has("tls-cert") || args.Has("tls-key");
  std::vector<std::string> router_args = {"--workers=" + workers, absl::StrCat("--port=", *port),
                                          "--port_file=" + router_port_file,
                                          absl::StrCat("--drain_timeout_ms=", kDrain.count())};
  if (tls) {
    router_args.insert(router_args.end(), {"--tls_cert=" + args.Get("tls-cert"), "--tls_key=" + args.Get("tls-key")});
  } else {
    router_args.insert(router_args.end(), {"--plaintext", "--bind_host=127.0.0.1"});
  }
  if (args.Has("api-keys-file")) router_args.push_back("--api_keys_file=" + args.Get("api-keys-file"));
  router_args.push_back("--prefix_cache=" + prefix_cache);
  router_args.push_back("--overlap_steps=" + overlap_steps);
  if (*metrics_port > 0) router_args.push_back(absl::StrCat("--metrics_port=", *metrics_port));
  const std::string http_port_file = run_dir + "/router.http_port";
  if (*http_port >= 0) {
    router_args.push_back(absl::StrCat("--http_port=", *http_port > 0 ? *http_port : FreeLoopbackPort()));
    router_args.push_back("--http_port_file=" + http_port_file);
    if (args.Has("served-model-name")) router_args.push_back("--served_model_name=" + args.Get("served-model-name"));
  }
  router = Spawn(router_bin, router_args);
  if (router < 0) return stop_all(1);
  children.push_back(router);
  const int router_port = ReadPort(router_port_file, {router}, std::chrono::seconds(120));
  if (router_port <= 0) {
    if (g_stop) return stop_all(0);
    std::fprintf(stderr, "gemma serve: the router did not start (see its messages above)\n");
    return stop_all(1);
  }
  std::printf("gemma serve: %lld group(s) of %lld rank(s) on %s; router listening on %s:%d, %s (Ctrl-C stops)\n",
              static_cast<long long>(*replicas), static_cast<long long>(*tp), model.c_str(), tls ? "0.0.0.0" : "127.0.0.1",
              router_port, tls ? "TLS" : "plaintext");
  if (*http_port >= 0) {
    // Written before the gRPC port file, so it is there by now.
    std::printf("gemma serve: OpenAI-compatible HTTP API at %s://%s:%d/v1\n", tls ? "https" : "http",
                tls ? "0.0.0.0" : "127.0.0.1", ReadPort(http_port_file, {router}, std::chrono::seconds(5)));
  }
  if (*metrics_port > 0) {
    // Up before the router's API port (so by now); plain HTTP, as Prometheus scrapes, on the API's host.
    std::printf("gemma serve: the router's metrics at http://%s:%lld/metrics\n", tls ? "0.0.0.0" : "127.0.0.1",
                static_cast<long long>(*metrics_port));
  }
  std::fflush(stdout);
  while (!g_stop) {
    for (pid_t pid : children) {
      int status;
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        std::fprintf(stderr, "gemma serve: process %d (%s) exited unexpectedly; stopping the cluster\n", pid,
                     pid == router ? "router" : "worker");
        children.erase(std::find(children.begin(), children.end(), pid));
        return stop_all(1);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  std::printf("gemma serve: stopping; running requests have up to %lld s to finish\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(kDrain).count()));
  std::fflush(stdout);
  return stop_all(0, kDrain + kStopMargin);
}

}  // namespace gemma
