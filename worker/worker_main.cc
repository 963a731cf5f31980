// gemma-worker: one rank of a tensor-parallel group; rank 0 serves the Worker API to routers.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <omp.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "protos/grpc_listen.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/collective/gloo_collective.h"
#include "shard/model/tensor_parallel.h"
#include "shard/open_shard.h"
#include "shard/runtime/tp_group.h"
#include "worker/child_process.h"
#include "worker/group_wait.h"
#include "worker/grpc_store.h"
#include "worker/launch_plan.h"
#include "worker/rank_launcher.h"
#include "worker/worker_metrics.h"
#include "worker/worker_options.h"
#include "worker/worker_service.h"
#include "tools/flags_help.h"

namespace gemma {
namespace {

std::atomic<bool> g_stop{false};

void OnSignal(int) { g_stop = true; }

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "gemma-worker: %s\n", std::string(s.message()).c_str());
  return s.code() == absl::StatusCode::kInvalidArgument || s.code() == absl::StatusCode::kUnimplemented ? 2 : 1;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

worker::v1::ModelInfo MakeInfo(const WorkerOptions& o, const ModelConfig& c, const Backend& b,
                               const StepLimits& limits) {
  worker::v1::ModelInfo info;
  info.set_model_dir(o.model);
  info.set_shape_name(c.ShapeName());
  info.set_vocab_size(c.vocab_size);
  info.set_hidden_size(c.hidden_size);
  info.set_num_layers(c.num_layers);
  info.set_num_heads(c.num_heads);
  info.set_num_kv_heads(c.num_kv_heads);
  info.set_head_dim(c.head_dim);
  info.set_max_position_embeddings(c.max_position_embeddings);
  info.set_bos_id(c.bos_id);
  info.set_eos_id(c.eos_id);
  info.set_pad_id(c.pad_id);
  info.set_kv_block_size(b.kv_block_size());
  info.set_num_kv_blocks(b.num_kv_blocks());
  info.set_kv_window(b.kv_window().window);
  info.set_kv_local_groups(b.kv_window().local_groups);
  info.set_tensor_parallel(o.world);
  info.set_tokenizer_model(ReadAll(o.model + "/tokenizer.model"));
  info.set_device(o.device);
  info.set_protocol_version(worker::v1::PROTOCOL_VERSION_CURRENT);
  info.set_group_name(o.group_name);
  info.set_model_family(c.family == ModelFamily::kGemma3   ? "gemma3"
                        : c.family == ModelFamily::kGemma2 ? "gemma2"
                                                           : "gemma");
  for (int id : c.extra_eos_ids) info.add_extra_eos_ids(id);
  info.set_max_tokens_per_step(limits.max_tokens);
  info.set_max_batch_size(limits.max_sequences);
  info.set_max_model_len(limits.max_context);
  return info;
}

// SIGTERM on rank 0: NOT_SERVING and "draining" in every answer at once, so routers send nothing new, while the
// steps of what is running go on; done once no step has come for a second, or at the drain timeout.
void Drain(const WorkerOptions& o, WorkerService& service, grpc::HealthCheckServiceInterface* health) {
  health->SetServingStatus(false);
  health->SetServingStatus("gemma.worker.v1.Worker", false);
  service.StartDraining();
  std::fprintf(stderr, "gemma-worker: draining (NOT_SERVING); steps run until none came for 1 s, at most %lld ms\n",
               static_cast<long long>(o.drain_timeout.count()));
  const auto start = std::chrono::steady_clock::now();
  const auto end = start + o.drain_timeout;
  auto next_heartbeat = start;
  while (std::chrono::steady_clock::now() < end && !service.Quiet(std::chrono::seconds(1))) {
    if (std::chrono::steady_clock::now() >= next_heartbeat) {
      if (!service.Heartbeat()) return;  // the group failed meanwhile: nothing left to drain
      next_heartbeat = std::chrono::steady_clock::now() + std::min<std::chrono::milliseconds>(o.timeout / 4, std::chrono::seconds(1));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "gemma-worker: %s after %.1f s; stopping the group\n",
               service.Quiet(std::chrono::seconds(1)) ? "drained" : "drain timeout reached", seconds);
}

int Run(const WorkerOptions& o) {
  omp_set_num_threads(o.threads > 0 ? o.threads : omp_get_num_procs());
  auto ckpt = Checkpoint::Open(o.model);
  if (!ckpt.ok()) return Fail(ckpt.status());
  std::shared_ptr<const Checkpoint> checkpoint(std::move(*ckpt));
  // The degree is checked before the group rendezvous, so a bad --world fails at once.
  if (auto tp = TensorParallel::Create(checkpoint->config(), o.rank, o.world); !tp.ok()) return Fail(tp.status());

  // Rank 0 hosts the rendezvous; everyone (rank 0 included) reaches it through the leader address.
  RendezvousService rendezvous;
  std::unique_ptr<grpc::Server> peer_server;
  if (o.rank == 0 && o.world > 1) {
    grpc::ServerBuilder b;
    ListenExclusively(b, ListenAddress(o.listen_host, o.peer_port), grpc::InsecureServerCredentials());
    b.RegisterService(&rendezvous);
    peer_server = b.BuildAndStart();
    if (!peer_server) return Fail(absl::UnavailableError(absl::StrCat("cannot listen on peer port ", o.peer_port)));
  }
  std::shared_ptr<Collective> collective = MakeSingleRankCollective();
  if (o.world > 1) {
    // Pods of one group may start minutes apart (scheduling, image pulls): they meet under their own long
    // timeout, and only then connect under the short one that detects a dead rank.
    GroupWaitOptions wait{o.rank, o.world, o.leader, o.group_wait_timeout};
    wait.log = [](const std::string& line) { std::fprintf(stderr, "gemma-worker %s\n", line.c_str()); };
    if (auto s = WaitForGroup(wait); !s.ok()) return Fail(s);
    GlooOptions g{o.rank, o.world, o.bind_host, o.timeout};
    auto c = CreateGlooCollective(std::make_shared<GrpcStore>(o.leader, o.timeout), g);
    if (!c.ok()) return Fail(c.status());
    collective = std::move(*c);
  }
  ShardOptions shard_options;
  shard_options.rank = o.rank;
  shard_options.world = o.world;
  shard_options.device = o.device;
  shard_options.precision = o.precision;
  shard_options.weights = o.weights;
  shard_options.int4_group_size = o.int4_group_size;
  shard_options.activations = o.activations;
  shard_options.cuda_device = o.cuda_device;
  ApplyToShard(o, shard_options);
  shard_options.timeout = o.timeout;
  if (o.world > 1) {
    // Weights load after the group connected and may take minutes longer on one host (a cold page cache, a slower
    // disk): the group meets again under the long wait before anything runs under --timeout_ms.
    shard_options.after_load = [&o] {
      GroupWaitOptions wait{o.rank, o.world, o.leader, o.group_wait_timeout};
      wait.stage = "loaded";
      wait.log = [](const std::string& line) { std::fprintf(stderr, "gemma-worker %s\n", line.c_str()); };
      return WaitForGroup(wait);
    };
  }
  auto shard = OpenShard(checkpoint, shard_options, collective);
  if (!shard.ok()) return Fail(shard.status());
  std::unique_ptr<Backend>* backend = &shard->backend;
  const KvWindow window = (*backend)->kv_window();
  const std::string windows = window.enabled() ? absl::StrCat("; local layers keep a window of ", window.window,
                                                              " positions in ", window.local_groups, " block groups")
                                               : "";
  // The slice's description names the rank ("rank r/w: q heads ..."), so it follows the program's name alone.
  std::fprintf(stderr, "gemma-worker %s; %d KV blocks of %d positions%s\n", shard->tp.DebugString().c_str(),
               (*backend)->num_kv_blocks(), (*backend)->kv_block_size(), windows.c_str());

  auto metrics = WorkerMetrics::Create(o.metrics_port > 0 ? ListenAddress(o.listen_host, o.metrics_port) : "", o.rank,
                                       (*backend)->num_kv_blocks());
  if (!metrics.ok()) return Fail(metrics.status());
  (*metrics)->SetModelInfo(std::filesystem::path(o.model).filename().string(), checkpoint->config().ShapeName(),
                           o.world, o.device);
  const StepLimits limits = shard_options.limits.Resolved(checkpoint->config());
  if (o.max_model_len > limits.max_context) {
    std::fprintf(stderr, "gemma-worker: --max_model_len %d is more than the model's context; sequences hold at most %d "
                 "positions\n", o.max_model_len, limits.max_context);
  }
  (*metrics)->SetStepLimits(limits);

  grpc::EnableDefaultHealthCheckService(true);
  if (o.rank != 0) {
    // With a fixed --port, only the health service: probes see a loaded rank, and a router that finds this
    // address (a headless service lists every rank) learns at once that it is no leader (UNIMPLEMENTED).
    std::unique_ptr<grpc::Server> health_server;
    if (o.port > 0) {
      grpc::ServerBuilder builder;
      ListenExclusively(builder, ListenAddress(o.listen_host, o.port), grpc::InsecureServerCredentials());
      health_server = builder.BuildAndStart();
      if (!health_server) return Fail(absl::UnavailableError(absl::StrCat("cannot listen on port ", o.port)));
      health_server->GetHealthCheckService()->SetServingStatus(true);
    }
    AdapterStore adapters(LoraLoaderFor(checkpoint->config(), shard->tp), o.max_resident_adapters);
    auto s = RunFollower(
        **backend, *collective,
        [m = metrics->get()](double seconds, const StepTimings& t) { m->RecordRankStep(seconds, t.collective_seconds); },
        &adapters);
    if (health_server) health_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    if (!s.ok()) return Fail(s);
    return 0;
  }
  worker::v1::ModelInfo info = MakeInfo(o, checkpoint->config(), **backend, limits);
  auto adapters = std::make_shared<AdapterStore>(LoraLoaderFor(checkpoint->config(), shard->tp), o.max_resident_adapters);
  const LoraCapacity capacity = (*backend)->lora_capacity();
  for (const auto& [name, dir] : o.loras) {
    auto id = adapters->Register(name, dir, [&](const LoraAdapter& a) { return CheckAdapterFits(capacity, a, kWorkerLoraFlags); });
    if (!id.ok()) return Fail(absl::InvalidArgumentError(absl::StrCat("--lora ", name, "=", dir, ": ", id.status().message())));
    std::fprintf(stderr, "gemma-worker: LoRA adapter %s (id %u) from %s\n", name.c_str(), *id, dir.c_str());
  }
  WorkerService service(std::make_unique<LeaderBackend>(std::move(*backend), collective), info, metrics->get(),
                        adapters);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  ListenExclusively(builder, ListenAddress(o.listen_host, o.port), grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(64 << 20);
  auto server = builder.BuildAndStart();
  if (!server || port == 0) return Fail(absl::UnavailableError(absl::StrCat("cannot listen on port ", o.port)));
  auto* health = server->GetHealthCheckService();
  health->SetServingStatus(true);
  health->SetServingStatus("gemma.worker.v1.Worker", true);
  // A failed step turns health NOT_SERVING at once, not at the next heartbeat.
  service.OnFailure([health, m = metrics->get()] {
    health->SetServingStatus(false);
    health->SetServingStatus("gemma.worker.v1.Worker", false);
    m->SetHealthy(false);
  });
  if (!o.port_file.empty()) std::ofstream(o.port_file) << port << "\n";
  std::printf("gemma-worker rank 0 of %d serving %s on port %d\n", o.world, o.model.c_str(), port);
  std::fflush(stdout);

  // Idle followers hear from the leader at least every timeout/4; a failed group turns unhealthy and exits.
  int exit_code = 0;
  const auto heartbeat_every = std::min<std::chrono::milliseconds>(o.timeout / 4, std::chrono::milliseconds(1000));
  while (!g_stop) {
    // In slices, so a SIGTERM turns the worker NOT_SERVING (draining) at once, not at the next heartbeat.
    const auto next = std::chrono::steady_clock::now() + heartbeat_every;
    while (!g_stop && std::chrono::steady_clock::now() < next) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (g_stop) break;
    if (!service.Heartbeat()) {
      std::fprintf(stderr, "gemma-worker: the group has failed (a rank died or hung); exiting so it can be restarted\n");
      std::this_thread::sleep_for(std::chrono::milliseconds(500));  // let in-flight replies go out
      exit_code = 1;
      break;
    }
  }
  if (exit_code == 0) Drain(o, service, health);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  service.Stop();
  if (peer_server) peer_server->Shutdown();
  return exit_code;
}

}  // namespace
}  // namespace gemma

int main(int argc, char** argv) {
  gemma::ListFlagsOfFolderInHelp("worker/");
  absl::SetProgramUsageMessage(
      "a gemma-serve worker: gemma-worker --model DIR --tp N (the whole group on this host) or one rank of a group: "
      "gemma-worker --model DIR [--rank R --world_size N --leader HOST:PORT]");
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    std::fprintf(stderr, "gemma-worker: unexpected argument \"%s\"; see --help\n", rest[1]);
    return 2;
  }
  std::signal(SIGTERM, gemma::OnSignal);
  std::signal(SIGINT, gemma::OnSignal);
  auto plan = gemma::LaunchPlanFromFlags();
  if (!plan.ok()) return gemma::Fail(plan.status());
  auto options = gemma::WorkerOptionsFromFlags();
  if (!options.ok()) return gemma::Fail(options.status());
  if (!plan->has_value()) return gemma::Run(*options);
  // A degree the model cannot split fails here, once, rather than in every rank.
  auto checkpoint = gemma::Checkpoint::Open(options->model);
  if (!checkpoint.ok()) return gemma::Fail(checkpoint.status());
  if (auto tp = gemma::TensorParallel::Create((*checkpoint)->config(), 0, (*plan)->tp); !tp.ok()) {
    return gemma::Fail(tp.status());
  }
  checkpoint->reset();
  gemma::LauncherSettings settings;
  settings.binary = gemma::SelfExecutable(argv[0]);
  settings.args.assign(argv + 1, argv + argc);
  settings.port = options->port;
  settings.peer_port = options->peer_port;
  settings.metrics_port = options->metrics_port;
  settings.listen_host = options->listen_host;
  settings.threads = options->threads;
  settings.drain_timeout = options->drain_timeout;
  if (auto s = gemma::CheckRankMetricsPorts(**plan, settings); !s.ok()) return gemma::Fail(s);
  return gemma::RunLauncher(**plan, settings, gemma::g_stop);
}
