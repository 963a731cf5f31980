#include "shard/runtime/adapter_store.h"

#include <algorithm>
#include <cctype>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "shard/model/lora_loader.h"

namespace gemma {
namespace {

// Names travel in API calls, metrics labels and file paths of operators'
// scripts: keep them plain.
absl::Status ValidateAdapterName(const std::string& name) {
  if (name.empty() || name.size() > 128) {
    return absl::InvalidArgumentError(absl::StrCat(
        "adapter name '", name, "' must have 1 to 128 characters"));
  }
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' ||
          c == '.' || c == '/')) {
      return absl::InvalidArgumentError(
          absl::StrCat("adapter name '", name,
                       "' may hold only letters, digits and - _ . /"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckAdapterFits(const LoraCapacity& capacity, const LoraAdapter& adapter, const LoraSlotFlags& flags) {
  if (adapter.rank <= capacity.max_rank) return absl::OkStatus();
  if (capacity.max_rank <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("LoRA adapter '", adapter.name, "' (rank ", adapter.rank,
                                                   ") cannot be served: this backend holds no adapters (0 GPU "
                                                   "adapter slots; start it with ",
                                                   flags.slots, ")"));
  }
  return absl::InvalidArgumentError(absl::StrCat("LoRA adapter '", adapter.name, "' has rank ", adapter.rank,
                                                 "; this backend runs ranks up to ", capacity.max_rank,
                                                 " (raise it with ", flags.max_rank, ")"));
}

AdapterLoader LoraLoaderFor(const ModelConfig& config,
                            const TensorParallel& tp) {
  return [config, tp](const std::string& dir) {
    return LoadLoraAdapter(dir, config, tp);
  };
}

AdapterStore::AdapterStore(AdapterLoader loader, int max_resident)
    : loader_(std::move(loader)), max_resident_(std::max(1, max_resident)) {}

absl::StatusOr<std::shared_ptr<LoraAdapter>> AdapterStore::Load(
    uint32_t id, const std::string& name, const std::string& dir) const {
  ASSIGN_OR_RETURN(std::shared_ptr<LoraAdapter> a, loader_(dir));
  a->id = id;
  a->name = name;
  a->dir = dir;
  return a;
}

absl::StatusOr<uint32_t> AdapterStore::Register(
    const std::string& name, const std::string& dir,
    const std::function<absl::Status(const LoraAdapter&)>& accept) {
  RETURN_IF_ERROR(ValidateAdapterName(name));
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, e] : entries_) {
      if (e.info.name == name) {
        return absl::AlreadyExistsError(absl::StrCat(
            "an adapter named '", name, "' is already loaded (from ",
            e.info.dir, "); unload it first"));
      }
    }
  }
  // Read outside the lock: steps go on meanwhile. The id is given after, so a
  // failed load uses none.
  ASSIGN_OR_RETURN(auto loaded, Load(0, name, dir));
  if (accept) RETURN_IF_ERROR(accept(*loaded));
  absl::MutexLock lock(&mu_);
  for (const auto& [id, e] : entries_) {
    if (e.info.name == name)
      return absl::AlreadyExistsError(
          absl::StrCat("an adapter named '", name, "' is loaded"));
  }
  const uint32_t id = next_id_++;
  loaded->id = id;  // no step sees it before it is in the table
  Entry e;
  e.info = {id, name, dir, loaded->rank, loaded->scaling, loaded->target_modules, true, 0};
  e.fingerprint = loaded->fingerprint;
  e.loaded = std::move(loaded);
  entries_[id] = std::move(e);
  Touch(id);
  return id;
}

absl::Status AdapterStore::Unregister(const std::string& name) {
  absl::MutexLock lock(&mu_);
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (it->second.info.name != name) continue;
    lru_.remove(it->first);
    entries_.erase(it);
    return absl::OkStatus();
  }
  return absl::NotFoundError(
      absl::StrCat("no adapter named '", name, "' is loaded"));
}

void AdapterStore::Touch(uint32_t id) {
  lru_.remove(id);
  lru_.push_front(id);
  while (static_cast<int>(lru_.size()) > max_resident_) {
    const uint32_t victim = lru_.back();
    lru_.pop_back();
    auto it = entries_.find(victim);
    if (it == entries_.end()) continue;
    it->second.loaded = nullptr;
    it->second.info.resident = false;
  }
}

std::shared_ptr<const LoraAdapter> AdapterStore::Use(Entry& e) {
  ++e.info.uses;
  std::shared_ptr<const LoraAdapter> held = e.loaded;
  Touch(e.info.id);
  return held;
}

absl::StatusOr<std::shared_ptr<const LoraAdapter>> AdapterStore::Acquire(uint32_t id) {
  std::string name, dir, fingerprint;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) {
      return absl::NotFoundError(absl::StrCat("adapter id ", id, " is not loaded (unloaded, or never loaded here)"));
    }
    if (it->second.loaded != nullptr) return Use(it->second);
    name = it->second.info.name;
    dir = it->second.info.dir;
    fingerprint = it->second.fingerprint;
  }
  // Read outside the lock: other steps' adapters stay available meanwhile.
  ASSIGN_OR_RETURN(std::shared_ptr<LoraAdapter> fresh, Load(id, name, dir));
  if (!fingerprint.empty() && fresh->fingerprint != fingerprint) {
    return absl::FailedPreconditionError(absl::StrCat("adapter '", name, "': its files in ", dir,
                                                      " changed since it was loaded; unload it and load it again"));
  }
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second.info.dir != dir) {
    return absl::NotFoundError(absl::StrCat("adapter '", name, "' was unloaded while it was read again"));
  }
  Entry& e = it->second;
  if (e.loaded == nullptr) {  // else another step read it meanwhile
    if (e.fingerprint.empty()) e.fingerprint = fresh->fingerprint;
    e.info.rank = fresh->rank;
    e.info.scaling = fresh->scaling;
    e.info.target_modules = fresh->target_modules;
    e.loaded = std::move(fresh);
    e.info.resident = true;
  }
  return Use(e);
}

absl::StatusOr<std::shared_ptr<const LoraAdapter>> AdapterStore::Get(uint32_t id) { return Acquire(id); }

absl::StatusOr<std::shared_ptr<const LoraAdapter>> AdapterStore::GetOrRegister(uint32_t id, const std::string& name,
                                                                               const std::string& dir) {
  bool registered = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(id);
    if (it == entries_.end() || it->second.info.dir != dir) {
      Entry e;
      e.info.id = id;
      e.info.name = name;
      e.info.dir = dir;
      lru_.remove(id);
      entries_.insert_or_assign(id, std::move(e));
      registered = true;
    }
  }
  auto held = Acquire(id);
  if (!held.ok() && registered) {
    // Never read here: forget it, so the next step naming it reads the folder afresh (and takes its fingerprint
    // then) instead of holding a half-registered entry.
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(id);
    if (it != entries_.end() && it->second.loaded == nullptr && it->second.fingerprint.empty()) entries_.erase(it);
  }
  return held;
}

std::vector<AdapterInfo> AdapterStore::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<AdapterInfo> out;
  for (const auto& [id, e] : entries_) out.push_back(e.info);
  std::sort(
      out.begin(), out.end(),
      [](const AdapterInfo& a, const AdapterInfo& b) { return a.id < b.id; });
  return out;
}

}  // namespace gemma
