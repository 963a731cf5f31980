// A model opened for local use by the gemma command: checkpoint, tokenizer, and a backend (one process or a local TP group).
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tokenizer/tokenizer.h"
#include "shard/runtime/adapter_store.h"
#include "shard/runtime/backend.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/collective/collective.h"
#include "shard/model/model_weights.h"

namespace gemma {

struct LocalModel {
  std::string dir;
  std::shared_ptr<const Checkpoint> checkpoint;
  std::unique_ptr<Tokenizer> tokenizer;  // null when the checkpoint has no tokenizer.model
  std::shared_ptr<const ModelWeights> weights;  // rank 0's slices, once a backend is attached
  std::unique_ptr<Backend> backend;
  std::unique_ptr<AdapterStore> adapters;  // rank 0's, once a backend is attached
  std::vector<pid_t> followers;  // TP ranks 1..N-1 as child processes
  std::string store_dir;
  ~LocalModel();
  LocalModel() = default;
  LocalModel(LocalModel&&) = default;
  LocalModel& operator=(LocalModel&&) = default;
  const ModelConfig& config() const { return checkpoint->config(); }
};

// Opens `dir` (the embedded default when empty): config, mapped files, tokenizer.
absl::StatusOr<LocalModel> OpenLocalModel(const std::string& dir);
// Where a local model runs: device "cpu" or "cuda" (rank r on GPU r), precision "bf16" or "f32" (cuda only), and
// the weights' stored precision (bf16, int8, int4 or fp8; see shard/model/quantize.h).
struct DeviceChoice {
  std::string device = "cpu";
  std::string precision = "bf16";
  std::string weights = "bf16";
  int int4_group_size = 0;  // 0: chosen per matrix (WeightLoadOptions)
  std::string kv_cache_dtype = "auto";  // shard/runtime/kv_cache.h's KvCacheDtype
  std::string activations = "f32";     // CPU weight products: f32, bf16 or int8 (cpu_backend.h)
  int gpu_lora_slots = 0;               // with cuda: adapter slots reserved on each GPU
  int gpu_lora_max_rank = 16;           // and the rank they hold
};

class Args;
// Declares --device, --precision, --weights, --int4-group-size and --kv-cache-dtype; `device_help` says which GPU a rank takes.
void DeclareDeviceFlags(Args& args, const char* device_help);
// Those flags, checked: InvalidArgument naming the flag and what it allows.
absl::StatusOr<DeviceChoice> DeviceChoiceFromFlags(const Args& args);

// Adds a backend whose KV cache holds `kv_tokens` positions. With tp > 1,
// starts tp - 1 follower processes of this binary and leads the group.
// A dead or hung rank fails the group within `timeout_ms`. `transport` is
// "shm" (shared memory: the ranks share this host) or "gloo" (TCP).
absl::Status AttachBackend(LocalModel& model, int64_t kv_tokens, int tp = 1, int64_t timeout_ms = 30000,
                           const std::string& transport = "shm", const DeviceChoice& device = {});

// The group's collective for one rank over `transport` ("shm" or "gloo"), rendezvous through `store_dir`.
absl::StatusOr<std::unique_ptr<Collective>> LocalCollective(const std::string& transport, const std::string& store_dir,
                                                            int rank, int world, int64_t timeout_ms);

// LoRA adapters one local run holds (the gemma command loads at most one).
inline constexpr int kLocalMaxAdapters = 4;

// Registers the adapter folder of --adapter, when given, with the model's store: its id (0 without the flag).
absl::StatusOr<uint32_t> RegisterAdapterFlag(LocalModel& model, const std::string& dir);

// Sets the number of compute threads (0: all cores).
void SetThreads(int threads);

// `gemma tp-follower`: one follower rank of a local group (started by AttachBackend).
int TpFollowerCommand(int argc, char** argv);

}  // namespace gemma
