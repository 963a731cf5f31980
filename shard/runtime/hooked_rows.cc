#include "shard/runtime/hooked_rows.h"

namespace gemma {

void HookedRows::Reset(std::span<const SequenceStep> batch, int64_t hidden, bool capture) {
  batch_ = batch;
  rows_.clear();
  reads_.clear();
  int64_t first = 0;
  bool any_reads = false;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceStep& s = batch[i];
    const int64_t count = static_cast<int64_t>(s.tokens.size());
    const bool reads = capture && !s.activations.empty();
    if (reads || !s.interventions.empty()) rows_.push_back({static_cast<int>(i), first, count});
    any_reads = any_reads || reads;
    first += count;
  }
  if (!any_reads) return;
  reads_.resize(batch.size());
  for (const Row& r : rows_) {
    const SequenceStep& s = batch[r.index];
    if (s.activations.empty()) continue;
    reads_[r.index].assign(s.activations.size(), std::vector<float>(r.count * hidden));
  }
}

bool HookedRows::Reads(ActivationKind kind, int index) const {
  if (reads_.empty()) return false;
  for (const Row& r : rows_) {
    for (const ActivationPoint& p : batch_[r.index].activations) {
      if (p.kind == kind && p.index == index) return true;
    }
  }
  return false;
}

void HookedRows::TakeReads(std::vector<std::vector<std::vector<float>>>* out) {
  *out = std::move(reads_);
  reads_.clear();
}

}  // namespace gemma
