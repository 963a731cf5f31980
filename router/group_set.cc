#include "router/group_set.h"

#include <algorithm>
#include <climits>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/status_macros.h"

namespace gemma {

GroupSet::~GroupSet() { Stop(); }

absl::Status GroupSet::Add(std::unique_ptr<WorkerGroup> group) {
  // Safe for the set's whole life: Stop() destroys the groups (so their threads) before the set goes.
  group->SetReroute([this](std::shared_ptr<ActiveRequest> request) { return Submit(std::move(request)); });
  {
    absl::MutexLock lock(&mu_);
    if (model_ != nullptr) {
      for (const auto& g : groups_) {
        if (g->address() == group->address()) {
          return absl::AlreadyExistsError(absl::StrCat("worker group ", group->address(), " is already served"));
        }
      }
      if (group->info().vocab_size() != model_->info.vocab_size() ||
          group->info().tokenizer_model() != model_->info.tokenizer_model()) {
        return absl::InvalidArgumentError(absl::StrCat("worker group ", group->address(), " serves a different model (",
                                                       group->info().shape_name(), ") than the groups served (",
                                                       model_->info.shape_name(), "); not added"));
      }
      // The router checks request lengths against the first group's context: a group that takes less would refuse
      // requests the router admitted, mid-generation.
      if (group->info().max_model_len() != model_->info.max_model_len()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "worker group ", group->address(), " takes contexts of ", group->info().max_model_len(),
            " positions (--max_model_len), the groups served ", model_->info.max_model_len(),
            "; every group of a router must take the same; not added"));
      }
      groups_.push_back(std::move(group));
      return absl::OkStatus();
    }
  }
  // The first group: its tokenizer becomes the router's (built outside the lock; it takes a while).
  auto first = std::make_shared<ServedModel>();
  first->info = group->info();
  const std::string tokenizer_file = first->info.model_dir() + "/tokenizer.model";
  if (first->info.tokenizer_model().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("worker group ", group->address(), " has no tokenizer: ",
                                                   tokenizer_file, " is missing or empty on its leader, and the ",
                                                   "router tokenizes text with it; not added"));
  }
  auto tokenizer = Tokenizer::FromBytes(first->info.tokenizer_model());
  if (!tokenizer.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("worker group ", group->address(), " sent a tokenizer that ",
                                                   "does not load (", tokenizer_file, "): ",
                                                   tokenizer.status().message()));
  }
  RETURN_IF_ERROR((*tokenizer)->CheckFitsModel(
      first->info.vocab_size(), absl::StrCat("worker group ", group->address(), "'s ", tokenizer_file)));
  first->tokenizer = std::move(*tokenizer);
  first->structured_output = std::make_unique<StructuredOutput>(first->tokenizer.get(), first->info.vocab_size());
  first->structured_output->Prepare();
  absl::MutexLock lock(&mu_);
  if (model_ != nullptr) return absl::AbortedError("another group joined first; add this one again");
  model_ = std::move(first);
  groups_.push_back(std::move(group));
  return absl::OkStatus();
}

std::shared_ptr<const ServedModel> GroupSet::model() const {
  absl::MutexLock lock(&mu_);
  return model_;
}

bool GroupSet::HoldsAsLoaded(const WorkerGroup& g, const std::string& adapter) const {
  const std::optional<std::string> path = g.AdapterPath(adapter);
  if (!path) return false;
  // Not while the admin call in flight changes it there: a load is all or nothing, so no request may reach a group
  // that took it before the call's outcome is known; an unload is on its way.
  auto changing = changing_.find(adapter);
  if (changing != changing_.end() && changing->second.contains(&g)) return false;
  auto it = adapter_paths_.find(adapter);
  return it == adapter_paths_.end() || it->second == *path;
}

absl::Status GroupSet::Submit(std::shared_ptr<ActiveRequest> request) {
  std::vector<std::shared_ptr<ActiveRequest>> one = {std::move(request)};
  return SubmitTogether(one);
}

absl::Status GroupSet::SubmitTogether(std::span<const std::shared_ptr<ActiveRequest>> requests) {
  const std::shared_ptr<ActiveRequest>& request = requests.front();
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the router is shutting down; retry");
  std::vector<WorkerGroup*> open;
  int least = INT_MAX;
  const std::string& adapter = request->options().adapter;
  int lacking_adapter = 0;
  for (auto& g : groups_) {
    if (!g->accepting() || retired_.count(g->address())) continue;
    // Only groups holding the request's adapter, as last loaded (one that was down then may lack it, or hold an
    // older one of that name).
    if (!adapter.empty() && !HoldsAsLoaded(*g, adapter)) {
      ++lacking_adapter;
      continue;
    }
    open.push_back(g.get());
    least = std::min(least, g->load());
  }
  // The group that holds the longest cached prefix of the prompt, among those within a load bound of the least
  // loaded (so one hot prefix cannot pin every request to one group); the least loaded among equals.
  const int bound = least == INT_MAX ? 0 : least + 4 + least / 4;
  WorkerGroup* best = nullptr;
  int best_cached = -1;
  // Named as the scheduler matches: the last prompt token is always computed; no adapter salt yet.
  const std::vector<int32_t>& prompt = request->options().prompt;
  std::vector<uint64_t> hashes;
  int hashed_for = -1;
  for (WorkerGroup* g : open) {
    if (g->load() > bound) continue;
    int cached = 0;
    if (open.size() > 1 && !request->options().score) {
      if (g->block_size() != hashed_for) {
        hashed_for = g->block_size();
        hashes = BlockManager::PrefixHashes(prompt, static_cast<int64_t>(prompt.size()) - 1, hashed_for, 0);
      }
      cached = g->CachedPrefixBlocks(hashes, hashed_for);
    }
    if (cached > best_cached || (cached == best_cached && g->load() < best->load())) {
      best = g;
      best_cached = cached;
    }
  }
  if (best == nullptr) {
    if (lacking_adapter > 0) {
      bool held = false;  // a loop, not a lambda: the lock analysis does not follow mu_ into one
      for (const auto& g : groups_) held = held || HoldsAsLoaded(*g, adapter);
      if (!held) return absl::InvalidArgumentError(absl::StrCat("adapter \"", adapter, "\" is not loaded"));
      return absl::UnavailableError(absl::StrCat("adapter \"", adapter, "\" is held only by worker groups that are "
                                                 "down or scheduled elsewhere (", lacking_adapter, " up lack it); "
                                                 "retry later, or load it again to bring the others up to date"));
    }
    return absl::UnavailableError(groups_.empty() ? "no worker group has joined yet; retry later"
                                                  : "no healthy worker group that this router schedules; retry later");
  }
  // Under the lock, so a retired group is never dropped between being picked and taking the request.
  for (const auto& r : requests) RETURN_IF_ERROR(best->Submit(r));
  return absl::OkStatus();
}

std::optional<std::string> GroupSet::ForwardTarget() const {
  absl::MutexLock lock(&mu_);
  if (stopping_) return std::nullopt;
  int least_here = INT_MAX;
  std::optional<PeerHolder> best_peer;
  for (const auto& g : groups_) {
    if (retired_.count(g->address())) continue;
    if (g->accepting() && g->load() < g->capacity()) least_here = std::min(least_here, g->load());
    if (auto p = g->peer(); p && p->load < p->capacity && (!best_peer || p->load < best_peer->load)) best_peer = p;
  }
  if (!best_peer) return std::nullopt;
  // The peer's load is as of its last lease renewal (a second or so old): forward only for a clear gain, the same
  // margin prefix-aware routing allows between groups.
  if (least_here != INT_MAX && least_here <= best_peer->load + 4 + best_peer->load / 4) return std::nullopt;
  return best_peer->address;
}

int GroupSet::healthy() const {
  absl::MutexLock lock(&mu_);
  int n = 0;
  for (const auto& g : groups_) n += (g->accepting() || g->peer()) && !retired_.count(g->address()) ? 1 : 0;
  return n;
}

bool GroupSet::Contains(const std::string& address) const {
  absl::MutexLock lock(&mu_);
  for (const auto& g : groups_) {
    if (g->address() == address) return true;
  }
  return false;
}

std::vector<std::string> GroupSet::addresses() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& g : groups_) {
    if (!retired_.count(g->address())) out.push_back(g->address());
  }
  return out;
}

void GroupSet::Retain(const std::set<std::string>& addresses) {
  std::vector<std::shared_ptr<WorkerGroup>> dropped;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& g : groups_) {
      if (addresses.count(g->address())) {
        retired_.erase(g->address());
      } else {
        retired_.insert(g->address());
      }
    }
    for (auto it = groups_.begin(); it != groups_.end();) {
      if (retired_.count((*it)->address()) && (*it)->load() == 0) {
        retired_.erase((*it)->address());
        dropped.push_back(std::move(*it));
        it = groups_.erase(it);
      } else {
        ++it;
      }
    }
  }
  // Destroyed outside the lock (or by an admin call still using it): a group's destructor joins its thread.
}

void GroupSet::Drain() {
  absl::MutexLock lock(&mu_);
  stopping_ = true;
  for (auto& g : groups_) g->Drain();
}

bool GroupSet::idle() const {
  absl::MutexLock lock(&mu_);
  for (const auto& g : groups_) {
    if (g->load() > 0) return false;
  }
  return true;
}

void GroupSet::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;  // an admin call in flight starts no RPC on a further group
  }
  // It holds copies of the groups: once it is over, those below are the last, and the groups stop here.
  absl::MutexLock admin(&admin_mu_);
  std::vector<std::shared_ptr<WorkerGroup>> stopped;
  {
    absl::MutexLock lock(&mu_);
    stopped.swap(groups_);
  }
  // Destroyed outside the lock: a group's thread may be handing a request back through Submit.
  stopped.clear();
}

}  // namespace gemma

namespace gemma {
namespace {

v1::Adapter ToPublic(const worker::v1::AdapterInfo& a) {
  v1::Adapter out;
  out.set_name(a.name());
  out.set_path(a.path());
  out.set_rank(a.rank());
  out.set_scaling(a.scaling());
  *out.mutable_target_modules() = a.target_modules();
  return out;
}

}  // namespace

std::vector<std::shared_ptr<WorkerGroup>> GroupSet::GroupsNow() const {
  absl::MutexLock lock(&mu_);
  return groups_;
}

// On the groups there are when the call begins (one that joins meanwhile is brought up to date by loading again);
// the RPCs run outside mu_, so requests go on being placed. All or nothing for this call among the groups that are
// up: when one refuses, those that took the adapter in it unload it again (groups that held it before keep it), and
// no request reaches them in between (changing_). A group that is down is passed over; requests naming the adapter
// are routed only to groups holding it, and loading again once the group is back brings it up to date.
absl::StatusOr<v1::Adapter> GroupSet::LoadAdapter(const std::string& name, const std::string& path) {
  absl::MutexLock admin(&admin_mu_);
  absl::StatusOr<v1::Adapter> loaded = LoadOnGroups(GroupsNow(), name, path);
  absl::MutexLock lock(&mu_);
  changing_.erase(name);
  if (loaded.ok()) adapter_paths_[name] = path;
  return loaded;
}

bool GroupSet::StartChanging(const std::string& name, const WorkerGroup* group) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return false;
  changing_[name].insert(group);
  return true;
}

absl::StatusOr<v1::Adapter> GroupSet::LoadOnGroups(const std::vector<std::shared_ptr<WorkerGroup>>& groups,
                                                   const std::string& name, const std::string& path) {
  if (groups.empty()) return absl::UnavailableError("no worker group has joined yet; retry");
  absl::Status first_error;
  std::optional<v1::Adapter> loaded;
  std::vector<WorkerGroup*> took;
  int holding = 0;
  int down = 0;
  for (const auto& g : groups) {
    if (!g->healthy()) {
      ++down;
      continue;
    }
    // A group that already serves this name from this path holds it: loading again brings groups that joined later
    // up to date.
    const std::vector<worker::v1::AdapterInfo> held = g->adapters();
    const auto same = std::find_if(held.begin(), held.end(), [&](const auto& a) { return a.name() == name; });
    if (same != held.end() && same->path() == path) {
      ++holding;
      if (!loaded) loaded = ToPublic(*same);
      continue;
    }
    if (!StartChanging(name, g.get())) {
      first_error = absl::UnavailableError("the router is shutting down; the adapter was not loaded");
      break;
    }
    auto info = g->LoadAdapter(name, path);
    if (!info.ok() && info.status().code() == absl::StatusCode::kUnavailable) {
      ++down;  // died before the router noticed: passed over as one marked down
      continue;
    }
    if (!info.ok()) {
      if (first_error.ok()) first_error = info.status();
      continue;
    }
    took.push_back(g.get());
    if (!loaded) loaded = ToPublic(*info);
  }
  if (down == static_cast<int>(groups.size())) {
    return absl::UnavailableError(absl::StrCat("every worker group is down (", down, "); adapter \"", name,
                                               "\" was not loaded; retry when one is back"));
  }
  if (took.empty() && first_error.ok()) {
    return absl::AlreadyExistsError(absl::StrCat("adapter \"", name, "\" is already loaded from ", path, " on every ",
                                                 down > 0 ? "worker group that is up" : "worker group"));
  }
  if (!first_error.ok()) {
    std::vector<std::string> stuck;
    for (WorkerGroup* g : took) {
      if (absl::Status s = g->UnloadAdapter(name); !s.ok()) stuck.push_back(std::string(s.message()));
    }
    if (took.empty()) return first_error;
    if (stuck.empty()) {
      return absl::Status(
          first_error.code(),
          absl::StrCat(first_error.message(),
                       " (not loaded: unloaded again from the ", took.size(),
                       " groups that had taken it)"));
    }
    // The adapter stays where unloading failed; the caller must know it is not all-or-nothing this time.
    return absl::AbortedError(absl::StrCat(first_error.message(), "; unloading it again failed on ", stuck.size(),
                                           " of the ", took.size(), " groups that had taken it, which still hold it (",
                                           absl::StrJoin(stuck, "; "), "): call UnloadAdapter"));
  }
  loaded->set_groups(holding + static_cast<int>(took.size()));
  return *loaded;
}

absl::Status GroupSet::UnloadAdapter(const std::string& name) {
  absl::MutexLock admin(&admin_mu_);
  bool found = false;
  absl::Status first_error;
  for (const auto& g : GroupsNow()) {
    if (!g->HasAdapter(name)) continue;
    found = true;
    if (!StartChanging(name, g.get())) {
      first_error = absl::UnavailableError("the router is shutting down; unload the adapter on the workers' restart");
      break;
    }
    if (auto s = g->UnloadAdapter(name); !s.ok() && first_error.ok()) first_error = s;
  }
  absl::MutexLock lock(&mu_);
  changing_.erase(name);
  if (!found) return absl::NotFoundError(absl::StrCat("no adapter named \"", name, "\" is loaded"));
  if (first_error.ok()) adapter_paths_.erase(name);
  return first_error;
}

std::vector<v1::Adapter> GroupSet::Adapters() const {
  absl::MutexLock lock(&mu_);
  std::map<std::string, v1::Adapter> by_name;
  for (const auto& g : groups_) {
    for (const auto& a : g->adapters()) {
      auto [it, fresh] = by_name.try_emplace(a.name(), ToPublic(a));
      it->second.set_groups(it->second.groups() + 1);
    }
  }
  std::vector<v1::Adapter> out;
  for (auto& [name, a] : by_name) out.push_back(std::move(a));
  return out;
}

bool GroupSet::HasAdapter(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  for (const auto& g : groups_) {
    if (g->HasAdapter(name)) return true;
  }
  return false;
}

}  // namespace gemma
