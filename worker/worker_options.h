// The worker's settings from flags and environment (as a Kubernetes StatefulSet provides them), validated.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "shard/open_shard.h"

namespace gemma {

struct WorkerOptions {
  std::string model;
  int rank = 0;
  int world = 1;
  std::string leader;     // host:port of rank 0's rendezvous service
  int port = 0;           // rank 0's Worker API port (0: any free port)
  int peer_port = 29500;  // rank 0's rendezvous port
  std::string listen_host = "0.0.0.0";  // where the Worker API, rendezvous and metrics ports listen
  std::string bind_host;                 // address this rank's collectives listen on
  std::string device = "cpu";
  int cuda_device = -1;         // -1: rank mod the devices this process sees
  std::string precision = "bf16";  // CUDA: bf16 or f32
  std::string weights = "bf16";    // stored weight precision: bf16, int8, int4, fp8
  std::string activations = "f32";  // CPU weight products: f32, bf16 (weights bf16), int8 (weights int8, int4)
  int int4_group_size = 0;  // 0: chosen per matrix (WeightLoadOptions)
  // 0 (no --kv_cache_mb): the CPU takes 1 GiB; a GPU plans its cache from gpu_memory_fraction instead.
  int64_t kv_cache_bytes = 0;
  double gpu_memory_fraction = 0.9;  // with cuda and no --kv_cache_mb: the device's share this process keeps within
  KvCacheDtype kv_cache_dtype = KvCacheDtype::kAuto;
  bool kv_windows = true;  // sliding-window layers keep only their window (KvCacheOptions::windowed)
  int max_tokens_per_step = 2048;
  int max_batch_size = 256;
  int max_model_len = 0;  // 0: the model's context
  int metrics_port = 0;   // 0: no metrics endpoint
  std::chrono::milliseconds timeout{30000};             // a rank that dies or hangs in a running group
  std::chrono::milliseconds group_wait_timeout{600000};  // ranks of a starting group waiting for each other
  std::chrono::milliseconds drain_timeout{30000};        // rank 0 on SIGTERM: the longest it keeps running steps
  std::string group_name;                                // metrics label routers use for this group
  int threads = 0;
  std::string port_file;  // where rank 0 writes its chosen port
  std::vector<std::pair<std::string, std::string>> loras;  // --lora NAME=DIR, loaded at start
  int max_resident_adapters = 8;  // adapters kept in memory; others are read again when used
  int gpu_lora_slots = 0;         // with --device cuda: adapters resident on the GPU, in slots reserved at start
  int gpu_lora_max_rank = 16;     // the rank those slots hold
};

// Reads the absl flags (declared in the .cc), falling back to GEMMA_* environment variables and, for the rank, the
// ordinal at the end of the host name. A StatefulSet may hold several groups: ordinal o is rank o % world of the
// group whose leader is ordinal o - o % world ("gemma-worker-3" at world 2 is rank 1 of the group led by
// "gemma-worker-2"). InvalidArgument says what is wrong and what is allowed.
absl::StatusOr<WorkerOptions> WorkerOptionsFromFlags();

// The shard's KV cache and step limits as the options ask (CPU: 1 GiB unless --kv_cache_mb; CUDA: planned from
// the memory fraction unless --kv_cache_mb fixes the size).
void ApplyToShard(const WorkerOptions& o, ShardOptions& shard);

// Ordinal suffix of a StatefulSet pod name, or -1.
int OrdinalFromHostname(const std::string& hostname);

// `leader` with "{leader}" replaced by the name of this pod's group leader (see above); unchanged without it.
// InvalidArgument when the placeholder is used but the host name has no ordinal.
absl::StatusOr<std::string> ExpandLeader(const std::string& leader, const std::string& hostname, int world);

// host:port for a server to listen on (--listen_host is an IPv4 address).
std::string ListenAddress(const std::string& host, int port);

}  // namespace gemma
