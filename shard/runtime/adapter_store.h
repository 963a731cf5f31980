// LoRA adapters by id for one rank: registered by name and folder, held in
// memory while used, the least recently used dropped beyond a bound and read
// again from their folder when next used.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "shard/model/lora_adapter.h"
#include "shard/model/lora_loader.h"
#include "shard/model/model_config.h"
#include "shard/model/tensor_parallel.h"

namespace gemma {

// Reads an adapter's slices for this rank from its folder (InvalidArgument
// naming the file and what is wrong).
using AdapterLoader =
    std::function<absl::StatusOr<std::shared_ptr<LoraAdapter>>(
        const std::string& dir)>;

// Reads peft adapters for the rank `tp` of a model of `config`.
AdapterLoader LoraLoaderFor(const ModelConfig& config,
                            const TensorParallel& tp);

// How the command that started a backend spells the flags sizing its adapter slots.
struct LoraSlotFlags {
  const char* slots;     // e.g. "--gpu_lora_slots"
  const char* max_rank;  // e.g. "--gpu_lora_max_rank"
};
inline constexpr LoraSlotFlags kWorkerLoraFlags{"--gpu_lora_slots", "--gpu_lora_max_rank"};
inline constexpr LoraSlotFlags kCliLoraFlags{"--gpu-lora-slots", "--gpu-lora-max-rank"};

// OK when a backend of `capacity` can run `adapter`; else InvalidArgument naming the adapter's rank, the limit and
// the flag that raises it. Every rank of a group shares the leader's flags, so the leader's answer holds for all.
absl::Status CheckAdapterFits(const LoraCapacity& capacity, const LoraAdapter& adapter, const LoraSlotFlags& flags);

struct AdapterInfo {
  uint32_t id = 0;
  std::string name, dir;
  int rank = 0;
  float scaling = 1.0f;
  std::vector<std::string> target_modules;
  bool resident = false;
  int64_t uses = 0;  // steps that ran with it
};

// Thread-safe. An adapter in use by a step stays alive (shared ownership) even
// if it is dropped meanwhile.
class AdapterStore {
 public:
  // At most `max_resident` (>= 1) adapters are kept in memory; a step using
  // more holds them for its duration.
  AdapterStore(AdapterLoader loader, int max_resident);

  // Reads and checks the adapter and gives it the next id (ids are never
  // reused). InvalidArgument for a bad name or folder; AlreadyExists for a name
  // already registered. `accept`, when set, sees the adapter once read and
  // before it is registered: its error is returned and nothing is kept.
  absl::StatusOr<uint32_t> Register(
      const std::string& name, const std::string& dir,
      const std::function<absl::Status(const LoraAdapter&)>& accept = nullptr)
      ABSL_LOCKS_EXCLUDED(mu_);
  // NotFound for an unknown name. Steps already holding it finish with it.
  absl::Status Unregister(const std::string& name) ABSL_LOCKS_EXCLUDED(mu_);
  // The registered adapter `id` (read again if it was dropped); NotFound when
  // no adapter has that id.
  absl::StatusOr<std::shared_ptr<const LoraAdapter>> Get(uint32_t id)
      ABSL_LOCKS_EXCLUDED(mu_);
  // A follower rank's view: the leader names the adapter's id, name and folder;
  // registered here on first use.
  absl::StatusOr<std::shared_ptr<const LoraAdapter>> GetOrRegister(
      uint32_t id, const std::string& name, const std::string& dir)
      ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<AdapterInfo> List() const ABSL_LOCKS_EXCLUDED(mu_);  // by id
  int max_resident() const { return max_resident_; }

 private:
  struct Entry {
    AdapterInfo info;
    std::shared_ptr<const LoraAdapter> loaded;  // null while not resident
    std::string fingerprint;                    // of its files when first read: a changed folder is refused
  };
  absl::StatusOr<std::shared_ptr<LoraAdapter>> Load(
      uint32_t id, const std::string& name, const std::string& dir) const;
  // The adapter, read again from its folder (outside the lock) when it was dropped.
  absl::StatusOr<std::shared_ptr<const LoraAdapter>> Acquire(uint32_t id) ABSL_LOCKS_EXCLUDED(mu_);
  std::shared_ptr<const LoraAdapter> Use(Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Touch(uint32_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const AdapterLoader loader_;
  const int max_resident_;
  mutable absl::Mutex mu_;
  uint32_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint32_t, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::list<uint32_t> lru_
      ABSL_GUARDED_BY(mu_);  // resident ids, most recently used first
};

}  // namespace gemma
