#include "tools/local_model.h"

#include <omp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "shard/cpu/cpu_backend.h"
#include "shard/open_shard.h"
#include "shard/collective/gloo_collective.h"
#include "shard/collective/shm_collective.h"
#include "shard/model/quantize.h"
#include "shard/model/tensor_parallel.h"
#include "shard/runtime/tp_group.h"
#include "tools/args.h"
#include "tools/cli_common.h"
#include "tools/default_model.h"
#include "worker/child_process.h"

namespace gemma {
namespace {

// The share of a GPU a local run keeps within, as the worker's --gpu_memory_fraction defaults.
constexpr double kGpuMemoryFraction = 0.9;

}  // namespace

void DeclareDeviceFlags(Args& args, const char* device_help) {
  args.Flag("device", device_help)
      .Flag("precision", "with --device cuda: bf16 (default) or f32")
      .Flag("weights", "stored weight precision: bf16 (default), int8 (per-channel), int4 (grouped; embedding int8), "
                       "fp8 (E4M3, per-channel; on a GPU of compute capability 8.9+), quantized at load from the checkpoint; a pre-quantized "
                       "checkpoint (GPTQ, AWQ, compressed-tensors FP8) loads as stored")
      .Flag("int4-group-size", "with --weights int4: input columns per scale and zero, 32, 64 or 128, at most (a "
                               "matrix whose inputs it does not divide takes 64 or 32); 0 (default) picks 128, or 64 "
                               "or 32 where a matrix or the --tp slice of it needs smaller groups")
      .Flag("kv-cache-dtype", "how the KV cache stores K and V: auto (default: f32 on the CPU, --precision on the "
                              "GPU), bf16 or int8 (a scale per position and head; a quarter of f32's memory) on "
                              "the CPU")
      .Flag("gpu-lora-slots", "with --device cuda: LoRA adapter slots reserved on each GPU, 0..1024 (default: 1 "
                              "where the command has --adapter and it is given, else 0)")
      .Flag("gpu-lora-max-rank", "with --device cuda: the highest LoRA rank those slots hold, 1..64 (default 16)")
      .Flag("activations", kMatMulActivationsHelp);
}

absl::StatusOr<DeviceChoice> DeviceChoiceFromFlags(const Args& args) {
  DeviceChoice d{args.Get("device", "cpu"), args.Get("precision", "bf16"), args.Get("weights", "bf16")};
  if (d.device != "cpu" && d.device != "cuda") {
    return absl::InvalidArgumentError("--device \"" + d.device + "\" is invalid; allowed: cpu, cuda");
  }
  if (d.precision != "bf16" && d.precision != "f32") {
    return absl::InvalidArgumentError("--precision \"" + d.precision + "\" is invalid; allowed: bf16, f32");
  }
  if (auto w = ParseWeightPrecision(d.weights); !w.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", w.status().message()));
  }
  ASSIGN_OR_RETURN(d.int4_group_size, Int4GroupSizeFlag(args, 0, /*zero_chooses=*/true));
  // A flag the run cannot apply is refused, not dropped.
  if (args.Has("precision") && d.device != "cuda") {
    return absl::InvalidArgumentError("--precision applies to --device cuda; the CPU computes in f32 (--activations "
                                      "chooses its dot products)");
  }
  if (args.Has("int4-group-size") && d.weights != "int4") {
    return absl::InvalidArgumentError(
        absl::StrCat("--int4-group-size applies to --weights int4, not ", d.weights));
  }
  for (const char* flag : {"gpu-lora-slots", "gpu-lora-max-rank"}) {
    if (args.Has(flag) && d.device != "cuda") {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, " applies to --device cuda; the CPU keeps adapters ",
                                                     "in host memory, with no slots to reserve"));
    }
  }
  d.kv_cache_dtype = args.Get("kv-cache-dtype", "auto");
  ASSIGN_OR_RETURN(const int64_t slots, args.GetInt("gpu-lora-slots", args.Has("adapter") ? 1 : 0, 0, 1024));
  d.gpu_lora_slots = static_cast<int>(slots);
  ASSIGN_OR_RETURN(const int64_t max_rank, args.GetInt("gpu-lora-max-rank", 16, 1, 64));
  d.gpu_lora_max_rank = static_cast<int>(max_rank);
  d.activations = args.Get("activations", "f32");
  if (auto a = ParseMatMulActivations(d.activations); !a.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", a.status().message()));
  }
  if (auto k = ParseKvCacheDtype(d.kv_cache_dtype); !k.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--kv-cache-dtype ", k.status().message()));
  }
  return d;
}

namespace {

KvCacheOptions KvFor(int64_t kv_tokens, const DeviceChoice& device) {
  KvCacheOptions kv;
  kv.num_blocks = static_cast<int>(std::max<int64_t>(1, (kv_tokens + kv.block_size - 1) / kv.block_size));
  // A GPU plans its cache from its memory at start like a worker does, so a local run measures what serving runs;
  // the CPU keeps the cache sized to the run.
  if (device.device == "cuda") kv.memory_fraction = kGpuMemoryFraction;
  kv.dtype = *ParseKvCacheDtype(device.kv_cache_dtype);  // checked by DeviceChoiceFromFlags
  return kv;
}

// One rank's weights and backend, through the shard builder; collective null for a single process.
absl::StatusOr<std::unique_ptr<Backend>> RankBackend(const std::shared_ptr<const Checkpoint>& ckpt, int rank, int world,
                                                    int64_t kv_tokens, const DeviceChoice& device,
                                                    int64_t timeout_ms, std::shared_ptr<Collective> collective,
                                                    std::shared_ptr<const ModelWeights>* weights_out) {
  ShardOptions o;
  o.rank = rank;
  o.world = world;
  o.device = device.device;
  o.precision = device.precision;
  o.weights = device.weights;
  o.int4_group_size = device.int4_group_size;
  o.activations = device.activations;
  o.gpu_lora_slots = device.gpu_lora_slots;
  o.gpu_lora_max_rank = device.gpu_lora_max_rank;
  o.kv = KvFor(kv_tokens, device);
  o.timeout = std::chrono::milliseconds(timeout_ms);
  auto shard = OpenShard(ckpt, o, std::move(collective));
  if (!shard.ok()) return shard.status();
  if (weights_out) *weights_out = shard->weights;
  return std::move(shard->backend);
}

}  // namespace

LocalModel::~LocalModel() {
  backend.reset();  // a healthy leader tells its followers to stop
  // Followers of a failed group may be hung: give each a moment, then end it.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  for (pid_t pid : followers) {
    int status;
    while (::waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  if (!store_dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(store_dir, ec);
  }
}

absl::StatusOr<LocalModel> OpenLocalModel(const std::string& dir_or_empty) {
  LocalModel m;
  m.dir = dir_or_empty;
  if (m.dir.empty()) {
    auto d = EnsureDefaultModel();
    if (!d.ok()) return d.status();
    m.dir = *d;
  }
  auto checkpoint = Checkpoint::Open(m.dir);
  if (!checkpoint.ok()) return checkpoint.status();
  m.checkpoint = std::move(*checkpoint);
  const std::string tok_path = (std::filesystem::path(m.dir) / "tokenizer.model").string();
  if (std::filesystem::exists(tok_path)) {
    auto tok = Tokenizer::FromFile(tok_path);
    if (!tok.ok()) return tok.status();
    if (absl::Status fits = (*tok)->CheckFitsModel(m.checkpoint->config().vocab_size, tok_path); !fits.ok()) {
      return fits;
    }
    m.tokenizer = std::move(*tok);
  }
  return m;
}

absl::StatusOr<std::unique_ptr<Collective>> LocalCollective(const std::string& transport, const std::string& store_dir,
                                                            int rank, int world, int64_t timeout_ms) {
  if (transport == "shm") {
    return CreateShmCollective({rank, world, store_dir, std::chrono::milliseconds(timeout_ms)});
  }
  if (transport == "gloo") {
    GlooOptions options{rank, world};
    options.timeout = std::chrono::milliseconds(timeout_ms);
    return CreateGlooCollective(MakeFileStore(store_dir), options);
  }
  return absl::InvalidArgumentError(absl::StrCat("transport \"", transport, "\" is invalid; allowed: shm, gloo"));
}

absl::Status AttachBackend(LocalModel& model, int64_t kv_tokens, int tp, int64_t timeout_ms,
                           const std::string& transport, const DeviceChoice& device) {
  {
    ASSIGN_OR_RETURN(const TensorParallel rank0, TensorParallel::Create(model.config(), 0, tp));
    model.adapters = std::make_unique<AdapterStore>(LoraLoaderFor(model.config(), rank0), kLocalMaxAdapters);
  }
  if (transport != "shm" && transport != "gloo") {
    return absl::InvalidArgumentError(
        absl::StrCat("--tp-transport \"", transport, "\" is invalid; allowed: shm, gloo"));
  }
  if (tp == 1) {
    auto backend = RankBackend(model.checkpoint, 0, 1, kv_tokens, device, timeout_ms, nullptr, &model.weights);
    if (!backend.ok()) return backend.status();
    model.backend = std::move(*backend);
    return absl::OkStatus();
  }
  // Check the degree before starting anyone.
  if (auto t = TensorParallel::Create(model.config(), 0, tp); !t.ok()) return t.status();
  std::error_code tmp_error;
  std::string tmpl = (std::filesystem::temp_directory_path(tmp_error) / "gemma-tp-XXXXXX").string();
  if (tmp_error) return absl::InternalError(absl::StrCat("no directory for temporary files: ", tmp_error.message()));
  if (::mkdtemp(tmpl.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("cannot create the rendezvous directory ", tmpl, ": ", std::strerror(errno),
                                            " (set TMPDIR to a writable directory)"));
  }
  model.store_dir = tmpl;
  const int threads = std::max(1, omp_get_max_threads() / tp);
  for (int rank = 1; rank < tp; ++rank) {
    // The leader's device flags, those that apply to the run only (a follower refuses the others as a user's
    // command does).
    std::vector<std::string> args = {"tp-follower", "--model", model.dir, "--rank", std::to_string(rank),
                                     "--world", std::to_string(tp), "--store", model.store_dir, "--kv-tokens",
                                     std::to_string(kv_tokens), "--threads", std::to_string(threads), "--timeout-ms",
                                     std::to_string(timeout_ms), "--transport", transport, "--device", device.device,
                                     "--weights", device.weights, "--kv-cache-dtype", device.kv_cache_dtype,
                                     "--activations", device.activations};
    if (device.weights == "int4") {
      args.insert(args.end(), {"--int4-group-size", std::to_string(device.int4_group_size)});
    }
    if (device.device == "cuda") {
      args.insert(args.end(), {"--precision", device.precision, "--gpu-lora-slots", std::to_string(device.gpu_lora_slots), "--gpu-lora-max-rank",
                               std::to_string(device.gpu_lora_max_rank)});
    }
    // Never outliving the leader: a follower gets SIGTERM when it dies.
    ASSIGN_OR_RETURN(const pid_t pid, SpawnChild(SelfExecutable("/proc/self/exe"), args,
                                                 {.die_with_parent = true, .parent_death_signal = SIGTERM}));
    model.followers.push_back(pid);
  }
  SetThreads(threads);
  auto collective = LocalCollective(transport, model.store_dir, 0, tp, timeout_ms);
  if (!collective.ok()) return collective.status();
  std::shared_ptr<Collective> shared(std::move(*collective));
  // Past this barrier every rank has met: the rendezvous files are done with, and go now rather than at exit, so
  // that a run stopped by a signal once it has started leaves nothing in TMPDIR.
  RETURN_IF_ERROR(shared->Barrier());
  std::error_code ec;
  std::filesystem::remove_all(model.store_dir, ec);
  model.store_dir.clear();
  auto backend = RankBackend(model.checkpoint, 0, tp, kv_tokens, device, timeout_ms, shared, &model.weights);
  if (!backend.ok()) return backend.status();
  model.backend = std::make_unique<LeaderBackend>(std::move(*backend), shared);
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> RegisterAdapterFlag(LocalModel& model, const std::string& dir) {
  if (dir.empty()) return 0;
  // Checked here rather than at the first step: a GPU backend holds adapters in slots of a fixed rank.
  const LoraCapacity capacity = model.backend->lora_capacity();
  auto id = model.adapters->Register("adapter", dir, [&](const LoraAdapter& a) {
    return CheckAdapterFits(capacity, a, kCliLoraFlags);
  });
  if (!id.ok()) return absl::InvalidArgumentError(absl::StrCat("--adapter ", dir, ": ", id.status().message()));
  return *id;
}

void SetThreads(int threads) { omp_set_num_threads(threads > 0 ? threads : omp_get_num_procs()); }

int TpFollowerCommand(int argc, char** argv) {
  const char* kCmd = "tp-follower";
  Args args(kCmd, "--model DIR --rank R --world N --store DIR --kv-tokens K [--threads T] (started by --tp)");
  args.Flag("model", "checkpoint directory").Flag("rank", "this rank").Flag("world", "group size");
  args.Flag("store", "rendezvous directory").Flag("kv-tokens", "KV cache positions").Flag("threads", "compute threads");
  args.Flag("timeout-ms", "collective timeout in ms");
  args.Flag("transport", "shm or gloo");
  DeclareDeviceFlags(args, "cpu or cuda");
  int code;
  if (!ParseOrExit(args, argc, argv, kCmd, &code)) return code;
  auto world = args.GetInt("world", 1, 1, 1024);
  auto rank = args.GetInt("rank", 0, 1, 1023);
  auto kv = args.GetInt("kv-tokens", 0, 1, int64_t{1} << 30);
  auto threads = args.GetInt("threads", 0, 0, 4096);
  auto timeout = args.GetInt("timeout-ms", 30000, 100, 3600000);
  for (const absl::Status& s : {world.status(), rank.status(), kv.status(), threads.status(), timeout.status()}) {
    if (!s.ok()) return Fail(kCmd, s);
  }
  SetThreads(static_cast<int>(*threads));
  auto ckpt = Checkpoint::Open(args.Get("model"));
  if (!ckpt.ok()) return Fail(kCmd, ckpt.status());
  auto collective = LocalCollective(args.Get("transport", "shm"), args.Get("store"), static_cast<int>(*rank),
                                    static_cast<int>(*world), *timeout);
  if (!collective.ok()) return Fail(kCmd, collective.status());
  std::shared_ptr<Collective> shared(std::move(*collective));
  // The leader removes the rendezvous directory once every rank is past this.
  if (auto s = shared->Barrier(); !s.ok()) return Fail(kCmd, s);
  auto device = DeviceChoiceFromFlags(args);
  if (!device.ok()) return Fail(kCmd, device.status());
  auto backend = RankBackend(std::shared_ptr<const Checkpoint>(std::move(*ckpt)), static_cast<int>(*rank),
                             static_cast<int>(*world), *kv, *device, *timeout, shared, nullptr);
  if (!backend.ok()) return Fail(kCmd, backend.status());
  auto tp = TensorParallel::Create((*backend)->config(), static_cast<int>(*rank), static_cast<int>(*world));
  if (!tp.ok()) return Fail(kCmd, tp.status());
  AdapterStore adapters(LoraLoaderFor((*backend)->config(), *tp), kLocalMaxAdapters);
  if (auto s = RunFollower(**backend, *shared, nullptr, &adapters); !s.ok()) return Fail(kCmd, s);
  return 0;
}

}  // namespace gemma
