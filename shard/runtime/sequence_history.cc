#include "shard/runtime/sequence_history.h"

#include "absl/strings/str_cat.h"

namespace gemma {

absl::Status SequenceHistory::Record(uint64_t id, int32_t start_pos, std::span<const int32_t> tokens,
                                     std::span<const int32_t> full) {
  if (start_pos < 0) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", id, ": start_pos ", start_pos, " is negative"));
  }
  auto it = entries_.find(id);
  const size_t held = it == entries_.end() ? 0 : it->second.tokens.size();
  if (full.empty() && held < static_cast<size_t>(start_pos)) {
    return absl::FailedPreconditionError(
        absl::StrCat("sequence ", id, ": its penalty history is not held here (", held, " of the ", start_pos,
                     " tokens before this row); resend the step with penalty_history in full"));
  }
  if (it == entries_.end()) {
    lru_.push_back(id);
    it = entries_.emplace(id, Entry{{}, std::prev(lru_.end())}).first;
  } else {
    lru_.splice(lru_.end(), lru_, it->second.lru);
  }
  std::vector<int32_t>& held_tokens = it->second.tokens;
  if (!full.empty()) {
    held_tokens.assign(full.begin(), full.end());
  } else {
    held_tokens.resize(static_cast<size_t>(start_pos));
    held_tokens.insert(held_tokens.end(), tokens.begin(), tokens.end());
  }
  return absl::OkStatus();
}

std::span<const int32_t> SequenceHistory::Tokens(uint64_t id) const {
  auto it = entries_.find(id);
  if (it == entries_.end()) return {};
  return it->second.tokens;
}

void SequenceHistory::Release(uint64_t id) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  lru_.erase(it->second.lru);
  entries_.erase(it);
}

void SequenceHistory::EvictBeyondCap() {
  while (entries_.size() > max_sequences_) {
    entries_.erase(lru_.front());
    lru_.pop_front();
  }
}

}  // namespace gemma
