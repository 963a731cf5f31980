// The rows of one step that ask for interventions or activation reads, and the host buffers their reads fill: the
// bookkeeping every backend's hooks share (shard/cpu/interventions.h, shard/cuda/cuda_interventions.h).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "shard/runtime/backend.h"

namespace gemma {

// Not thread-safe; reused across steps (Reset each time).
class HookedRows {
 public:
  struct Row {
    int index;      // in the batch
    int64_t first;  // its first token in the step (tokens are laid out row after row)
    int64_t count;  // its tokens
  };
  // `capture` false leaves reads out (tensor-parallel followers: only rank 0 reads activations).
  void Reset(std::span<const SequenceStep> batch, int64_t hidden, bool capture);
  std::span<const SequenceStep> batch() const { return batch_; }
  // The rows that ask for interventions or reads; empty: the step asks for nothing.
  const std::vector<Row>& rows() const { return rows_; }
  bool any_reads() const { return !reads_.empty(); }
  // Whether a row reads `kind` at `index`.
  bool Reads(ActivationKind kind, int index) const;
  // Calls fn(row, destination) for each read of `kind` at `index`: the destination holds [row.count, hidden].
  template <typename Fn>
  void ForEachRead(ActivationKind kind, int index, Fn fn) {
    if (reads_.empty()) return;
    for (const Row& r : rows_) {
      const auto points = batch_[r.index].activations;
      for (size_t j = 0; j < points.size(); ++j) {
        if (points[j].kind == kind && points[j].index == index) fn(r, reads_[r.index][j].data());
      }
    }
  }
  // Hands the reads over: out[i][j] is row i's point j, [its tokens, hidden]; empty for rows without reads (and
  // out empty when no row reads).
  void TakeReads(std::vector<std::vector<std::vector<float>>>* out);

 private:
  std::span<const SequenceStep> batch_;
  std::vector<Row> rows_;
  std::vector<std::vector<std::vector<float>>> reads_;  // [batch row][point][tokens * hidden]
};

}  // namespace gemma
