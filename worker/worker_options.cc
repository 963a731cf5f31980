#include "worker/worker_options.h"

#include <unistd.h>

#include <cstdlib>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "shard/cpu/cpu_backend.h"
#include "shard/model/quantize.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory (env GEMMA_MODEL)");
ABSL_FLAG(int, rank, -1, "this rank; -1: env GEMMA_RANK, else the host name's ordinal suffix, else 0");
ABSL_FLAG(int, world_size, 0, "ranks in the group (tensor-parallel degree); 0: env GEMMA_WORLD_SIZE, else 1");
ABSL_FLAG(std::string, leader, "", "host:port of rank 0's rendezvous service (env GEMMA_LEADER); default 127.0.0.1:peer_port");
ABSL_FLAG(int, port, 0, "rank 0's Worker API port; 0: any free port");
ABSL_FLAG(int, peer_port, 29500, "rank 0's rendezvous port");
ABSL_FLAG(std::string, listen_host, "0.0.0.0",
          "where the Worker API, the rendezvous and the metrics ports listen: 0.0.0.0 (every interface, default) or "
          "127.0.0.1 (this machine only, as gemma serve runs them)");
ABSL_FLAG(std::string, bind_host, "", "address this rank's collectives listen on (env GEMMA_BIND_HOST); default: the host name, or 127.0.0.1 for a loopback leader");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda");
ABSL_FLAG(int, cuda_device, -1, "CUDA device of this rank; -1: rank mod the devices this process sees");
ABSL_FLAG(std::string, precision, "bf16", "CUDA: bf16 (weights, GEMM inputs, KV cache) or f32 (exact checks)");
ABSL_FLAG(std::string, weights, "bf16",
          "stored weight precision: bf16, int8 (per-channel), int4 (grouped; embedding int8) or fp8 (E4M3, "
          "per-channel; on a GPU of compute capability 8.9+), quantized at load; a pre-quantized checkpoint (GPTQ, "
          "AWQ, compressed-tensors FP8) loads as stored");
ABSL_FLAG(int32_t, int4_group_size, 0,
          "with --weights int4: input columns per scale and zero, 32, 64 or 128, at most (a matrix whose inputs it "
          "does not divide takes 64 or 32); 0 (default) picks 128, or 64 or 32 where a matrix or this "
          "tensor-parallel degree's slice of it needs smaller groups");
ABSL_FLAG(int64_t, kv_cache_mb, 0,
          "KV-cache size per rank in MiB; 0: 1024 on the CPU, planned from --gpu_memory_fraction with --device cuda");
ABSL_FLAG(double, gpu_memory_fraction, 0.9,
          "with --device cuda and no --kv_cache_mb: the share of the device's memory this process keeps within; the "
          "KV cache takes what the weights and the largest step leave of it");
ABSL_FLAG(std::string, kv_cache_dtype, "auto",
          "how the KV cache stores K and V: auto (f32 on the CPU, --precision with --device cuda), bf16, or int8 on the "
          "CPU (a scale per position and head; a quarter of f32's memory, so four times the positions)");
ABSL_FLAG(std::string, activations, "f32", gemma::kMatMulActivationsHelp);
ABSL_FLAG(bool, kv_windows, true,
          "sliding-window (local) layers keep only their window in the KV cache, in blocks of their own that are "
          "given back as the window passes; false: they keep every position, as global layers do");
ABSL_FLAG(int, max_tokens_per_step, 2048, "the most tokens one step takes (decodes plus prompt chunks)");
ABSL_FLAG(int, max_batch_size, 256, "the most sequences one step takes");
ABSL_FLAG(int, max_model_len, 0, "the most positions of one sequence (prompt + generated); 0: the model's context");
ABSL_FLAG(int, metrics_port, 0, "port of the Prometheus /metrics endpoint; 0: none");
ABSL_FLAG(int64_t, timeout_ms, 30000, "once the group runs, a rank that dies or hangs fails it within this time");
ABSL_FLAG(int64_t, group_wait_timeout_ms, 0,
          "a starting rank waits this long for the rest of its group; 0: env GEMMA_GROUP_WAIT_TIMEOUT_MS, else 600000");
ABSL_FLAG(int64_t, drain_timeout_ms, 30000,
          "on SIGTERM rank 0 keeps running steps until none came for 1 s, at most this long");
ABSL_FLAG(std::string, group_name, "", "the group's name in routers' metrics (env GEMMA_GROUP_NAME); default: the host name");
ABSL_FLAG(int, threads, 0, "compute threads; 0: all cores");
ABSL_FLAG(std::string, port_file, "", "rank 0 writes its chosen Worker API port here");
ABSL_FLAG(std::vector<std::string>, lora, {},
          "LoRA adapters to load at start, NAME=DIR[,NAME=DIR...] (folders as peft saves them, readable by every rank)");
ABSL_FLAG(int, max_resident_adapters, 8, "LoRA adapters kept in memory, 1..1024; the least recently used beyond it "
          "are read again from their folder when next used");
ABSL_FLAG(int, gpu_lora_slots, -1, "with --device cuda: LoRA adapters held on the GPU at once, 0..1024, each in a slot "
          "reserved at start (every projection of every layer at --gpu_lora_max_rank); 0: none, adapters are "
          "refused at load; -1 (default): 8 when --lora names adapters, else 0 (memory goes to the KV cache)");
ABSL_FLAG(int, gpu_lora_max_rank, 16, "with --device cuda: the highest LoRA rank the GPU's adapter slots hold, 1..64");

namespace gemma {
namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

}  // namespace

void ApplyToShard(const WorkerOptions& o, ShardOptions& shard) {
  shard.limits.max_tokens = o.max_tokens_per_step;
  shard.limits.max_sequences = o.max_batch_size;
  shard.limits.max_context = o.max_model_len;
  shard.gpu_lora_slots = o.gpu_lora_slots;
  shard.gpu_lora_max_rank = o.gpu_lora_max_rank;
  // A size given on the command line wins on a GPU too: it is how a device shared with something else is kept to
  // a known share.
  const bool planned = o.device == "cuda" && o.kv_cache_bytes == 0;
  shard.kv.memory_fraction = planned ? o.gpu_memory_fraction : 0;
  shard.kv.max_bytes = o.kv_cache_bytes > 0 ? o.kv_cache_bytes : KvCacheOptions{}.max_bytes;
  shard.kv.windowed = o.kv_windows;
  shard.kv.dtype = o.kv_cache_dtype;
}

std::string ListenAddress(const std::string& host, int port) { return absl::StrCat(host, ":", port); }

int OrdinalFromHostname(const std::string& hostname) {
  const size_t dash = hostname.rfind('-');
  if (dash == std::string::npos) return -1;
  int v;
  return absl::SimpleAtoi(hostname.substr(dash + 1), &v) && v >= 0 ? v : -1;
}

absl::StatusOr<std::string> ExpandLeader(const std::string& leader, const std::string& hostname, int world) {
  const size_t at = leader.find("{leader}");
  if (at == std::string::npos) return leader;
  const int ordinal = OrdinalFromHostname(hostname);
  if (ordinal < 0) {
    return absl::InvalidArgumentError(absl::StrCat("the leader address \"", leader, "\" names {leader}, but the host name \"",
                                                   hostname, "\" has no StatefulSet ordinal"));
  }
  const std::string pod = absl::StrCat(hostname.substr(0, hostname.rfind('-') + 1), ordinal - ordinal % world);
  return absl::StrCat(leader.substr(0, at), pod, leader.substr(at + 8));
}

absl::StatusOr<WorkerOptions> WorkerOptionsFromFlags() {
  WorkerOptions o;
  o.model = absl::GetFlag(FLAGS_model);
  if (o.model.empty()) o.model = Env("GEMMA_MODEL");
  if (o.model.empty()) return absl::InvalidArgumentError("--model DIR is required (or GEMMA_MODEL)");

  o.world = absl::GetFlag(FLAGS_world_size);
  if (o.world == 0 && !Env("GEMMA_WORLD_SIZE").empty() && !absl::SimpleAtoi(Env("GEMMA_WORLD_SIZE"), &o.world)) {
    return absl::InvalidArgumentError("GEMMA_WORLD_SIZE must be an integer");
  }
  if (o.world == 0) o.world = 1;
  if (o.world < 1 || o.world > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("--world_size ", o.world, " is invalid; allowed: 1..1024"));
  }
  o.rank = absl::GetFlag(FLAGS_rank);
  if (o.rank == -1 && !Env("GEMMA_RANK").empty() && !absl::SimpleAtoi(Env("GEMMA_RANK"), &o.rank)) {
    return absl::InvalidArgumentError("GEMMA_RANK must be an integer");
  }
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  if (o.rank == -1) {
    o.rank = o.world > 1 ? OrdinalFromHostname(host) % o.world : 0;
    if (o.rank < 0) {
      return absl::InvalidArgumentError(absl::StrCat("no --rank, GEMMA_RANK, or ordinal in host name \"", host, "\""));
    }
  }
  if (o.rank < 0 || o.rank >= o.world) {
    return absl::InvalidArgumentError(absl::StrCat("--rank ", o.rank, " is invalid for --world_size ", o.world,
                                                   "; allowed: 0..", o.world - 1));
  }
  o.port = absl::GetFlag(FLAGS_port);
  o.peer_port = absl::GetFlag(FLAGS_peer_port);
  o.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  for (auto [v, name] : {std::pair{o.port, "--port"}, {o.peer_port, "--peer_port"}, {o.metrics_port, "--metrics_port"}}) {
    if (v < 0 || v > 65535) return absl::InvalidArgumentError(absl::StrCat(name, " ", v, " is invalid; allowed: 0..65535"));
  }
  o.leader = absl::GetFlag(FLAGS_leader);
  if (o.leader.empty()) o.leader = Env("GEMMA_LEADER");
  if (o.leader.empty()) o.leader = absl::StrCat("127.0.0.1:", o.peer_port);
  ASSIGN_OR_RETURN(o.leader, ExpandLeader(o.leader, host, o.world));
  const std::string leader_host = o.leader.substr(0, o.leader.rfind(':'));
  // Either: a group's ranks reach their leader's rendezvous, and a launcher its ranks' metrics, over loopback on
  // one host, and the metrics server speaks IPv4 only.
  o.listen_host = absl::GetFlag(FLAGS_listen_host);
  if (o.listen_host != "0.0.0.0" && o.listen_host != "127.0.0.1") {
    return absl::InvalidArgumentError(absl::StrCat("--listen_host \"", o.listen_host,
                                                   "\" is invalid; allowed: 0.0.0.0 (every interface), 127.0.0.1 "
                                                   "(this machine only)"));
  }
  if (o.listen_host == "127.0.0.1" && o.world > 1 && leader_host != "127.0.0.1" && leader_host != "localhost") {
    return absl::InvalidArgumentError(absl::StrCat("--listen_host 127.0.0.1 keeps the rendezvous to this machine, "
                                                   "but the leader is ", o.leader, "; allowed with it: a leader at "
                                                   "127.0.0.1, or --listen_host 0.0.0.0"));
  }
  o.bind_host = absl::GetFlag(FLAGS_bind_host);
  if (o.bind_host.empty()) o.bind_host = Env("GEMMA_BIND_HOST");
  if (o.bind_host.empty()) {
    if (leader_host == "127.0.0.1" || leader_host == "localhost") {
      o.bind_host = "127.0.0.1";
    } else {
      o.bind_host = host;
    }
  }
  o.device = absl::GetFlag(FLAGS_device);
  if (o.device != "cpu" && o.device != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("--device \"", o.device, "\" is invalid; allowed: cpu, cuda"));
  }
  o.cuda_device = absl::GetFlag(FLAGS_cuda_device);
  if (o.cuda_device < -1) return absl::InvalidArgumentError("--cuda_device must be >= 0, or -1 for rank mod devices");
  o.precision = absl::GetFlag(FLAGS_precision);
  if (o.precision != "bf16" && o.precision != "f32") {
    return absl::InvalidArgumentError(absl::StrCat("--precision \"", o.precision, "\" is invalid; allowed: bf16, f32"));
  }
  o.weights = absl::GetFlag(FLAGS_weights);
  if (auto w = ParseWeightPrecision(o.weights); !w.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", w.status().message()));
  }
  o.activations = absl::GetFlag(FLAGS_activations);
  if (auto a = ParseMatMulActivations(o.activations); !a.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", a.status().message()));
  }
  o.int4_group_size = absl::GetFlag(FLAGS_int4_group_size);
  RETURN_IF_ERROR(ValidateInt4GroupSize(o.int4_group_size, /*zero_chooses=*/true, "--int4_group_size"));
  const int64_t kv_mb = absl::GetFlag(FLAGS_kv_cache_mb);
  if (kv_mb < 0 || kv_mb > (int64_t{1} << 24)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--kv_cache_mb ", kv_mb, " is invalid; allowed: 1..16777216, or 0 for the default"));
  }
  o.kv_cache_bytes = kv_mb << 20;
  o.gpu_memory_fraction = absl::GetFlag(FLAGS_gpu_memory_fraction);
  o.kv_windows = absl::GetFlag(FLAGS_kv_windows);
  auto kv_dtype = ParseKvCacheDtype(absl::GetFlag(FLAGS_kv_cache_dtype));
  if (!kv_dtype.ok()) return absl::InvalidArgumentError(absl::StrCat("--kv_cache_dtype ", kv_dtype.status().message()));
  o.kv_cache_dtype = *kv_dtype;
  // Written so that NaN fails too.
  if (!(o.gpu_memory_fraction > 0 && o.gpu_memory_fraction <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("--gpu_memory_fraction ", o.gpu_memory_fraction,
                                                   " is invalid; allowed: more than 0, at most 1"));
  }
  o.max_tokens_per_step = absl::GetFlag(FLAGS_max_tokens_per_step);
  if (o.max_tokens_per_step < 1 || o.max_tokens_per_step > (1 << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_tokens_per_step ", o.max_tokens_per_step, " is invalid; allowed: 1..1048576"));
  }
  o.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  if (o.max_batch_size < 1 || o.max_batch_size > 65536) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_batch_size ", o.max_batch_size, " is invalid; allowed: 1..65536"));
  }
  o.max_model_len = absl::GetFlag(FLAGS_max_model_len);
  if (o.max_model_len < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--max_model_len ", o.max_model_len,
                                                   " is invalid; allowed: 0 (the model's context) or more"));
  }
  const int64_t timeout = absl::GetFlag(FLAGS_timeout_ms);
  if (timeout < 100 || timeout > 3600000) {
    return absl::InvalidArgumentError(absl::StrCat("--timeout_ms ", timeout, " is invalid; allowed: 100..3600000"));
  }
  o.timeout = std::chrono::milliseconds(timeout);
  int64_t group_wait = absl::GetFlag(FLAGS_group_wait_timeout_ms);
  if (group_wait == 0 && !Env("GEMMA_GROUP_WAIT_TIMEOUT_MS").empty() &&
      !absl::SimpleAtoi(Env("GEMMA_GROUP_WAIT_TIMEOUT_MS"), &group_wait)) {
    return absl::InvalidArgumentError(absl::StrCat("GEMMA_GROUP_WAIT_TIMEOUT_MS=\"", Env("GEMMA_GROUP_WAIT_TIMEOUT_MS"),
                                                   "\" is invalid; allowed: an integer in 100..86400000"));
  }
  if (group_wait == 0) group_wait = 600000;
  if (group_wait < 100 || group_wait > 86400000) {
    return absl::InvalidArgumentError(
        absl::StrCat("--group_wait_timeout_ms ", group_wait, " is invalid; allowed: 100..86400000 (0: the default)"));
  }
  o.group_wait_timeout = std::chrono::milliseconds(group_wait);
  const int64_t drain = absl::GetFlag(FLAGS_drain_timeout_ms);
  if (drain < 0 || drain > 3600000) {
    return absl::InvalidArgumentError(absl::StrCat("--drain_timeout_ms ", drain, " is invalid; allowed: 0..3600000"));
  }
  o.drain_timeout = std::chrono::milliseconds(drain);
  o.group_name = absl::GetFlag(FLAGS_group_name);
  if (o.group_name.empty()) o.group_name = Env("GEMMA_GROUP_NAME");
  if (o.group_name.empty()) o.group_name = host;
  if (o.group_name.size() > 253) {
    return absl::InvalidArgumentError(absl::StrCat("--group_name is ", o.group_name.size(),
                                                   " characters long; allowed: up to 253"));
  }
  o.threads = absl::GetFlag(FLAGS_threads);
  if (o.threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  o.port_file = absl::GetFlag(FLAGS_port_file);
  for (const std::string& spec : absl::GetFlag(FLAGS_lora)) {
    const size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
      return absl::InvalidArgumentError(absl::StrCat("--lora \"", spec, "\" is invalid; give NAME=DIR"));
    }
    o.loras.emplace_back(spec.substr(0, eq), spec.substr(eq + 1));
  }
  o.max_resident_adapters = absl::GetFlag(FLAGS_max_resident_adapters);
  if (o.max_resident_adapters < 1 || o.max_resident_adapters > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_resident_adapters is ", o.max_resident_adapters, "; allowed: 1 to 1024"));
  }
  o.gpu_lora_slots = absl::GetFlag(FLAGS_gpu_lora_slots);
  if (o.gpu_lora_slots < -1 || o.gpu_lora_slots > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("--gpu_lora_slots is ", o.gpu_lora_slots, "; allowed: 0 to 1024, or -1 for the default"));
  }
  // Slots cost memory whether used or not (1.5 GiB at 7B): reserved by default only for adapters named at start.
  if (o.gpu_lora_slots == -1) o.gpu_lora_slots = o.loras.empty() ? 0 : 8;
  o.gpu_lora_max_rank = absl::GetFlag(FLAGS_gpu_lora_max_rank);
  if (o.gpu_lora_max_rank < 1 || o.gpu_lora_max_rank > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("--gpu_lora_max_rank is ", o.gpu_lora_max_rank, "; allowed: 1 to 64"));
  }
  return o;
}

}  // namespace gemma
