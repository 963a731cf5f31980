// The tokens of each penalized sequence, kept where sampling happens (rank 0 of a group, or the local executor),
// so a Step need not resend a sequence's whole history for every token.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <span>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"

namespace gemma {

// Per sequence id, the tokens at positions [0, n) it has been sent, least recently used first. Not thread-safe.
//
// Bounded: beyond `max_sequences`, EvictBeyondCap drops the least recently used. That is safe because a step never
// trusts a history it lacks: Record answers FailedPrecondition for a row that starts past what is held (an evicted
// or never-seen sequence), before anything runs, and the engine then resends that step with every penalized
// sequence's full history (StepRow::penalty_history), which Record takes in place of what it held.
class SequenceHistory {
 public:
  static constexpr size_t kDefaultMaxSequences = 1024;
  explicit SequenceHistory(size_t max_sequences = kDefaultMaxSequences) : max_sequences_(max_sequences) {}

  // Records one row of sequence `id`: `tokens` at positions [start_pos, start_pos + tokens.size()). What is held
  // from start_pos on is dropped first (a preempted sequence being recomputed). With `full` non-empty, `full` is the
  // sequence's tokens so far (these tokens included) and replaces what is held. FailedPrecondition, with nothing
  // changed, when fewer than start_pos tokens are held and `full` is empty.
  absl::Status Record(uint64_t id, int32_t start_pos, std::span<const int32_t> tokens, std::span<const int32_t> full);
  // The held tokens of `id`, valid until the next Record, Release or EvictBeyondCap; empty if unknown.
  std::span<const int32_t> Tokens(uint64_t id) const;
  // The sequence ended: forget it (unknown ids are ignored).
  void Release(uint64_t id);
  // Drops least recently recorded sequences until at most max_sequences remain. Called between steps, so a
  // step's own sequences (the most recent) are never dropped while it reads them.
  void EvictBeyondCap();

  size_t size() const { return entries_.size(); }
  bool Contains(uint64_t id) const { return entries_.contains(id); }

 private:
  struct Entry {
    std::vector<int32_t> tokens;
    std::list<uint64_t>::iterator lru;  // its place in lru_
  };
  size_t max_sequences_;
  absl::flat_hash_map<uint64_t, Entry> entries_;
  std::list<uint64_t> lru_;  // least recently recorded first
};

}  // namespace gemma
