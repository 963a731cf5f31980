// Gathers one sequence's activations from the rows that carry them: shared by the gemma command (RunBatch) and
// the router, so both read a chunked or preempted sequence the same way.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/step_protocol.h"

namespace gemma {

// Rows come in position order. A preempted sequence is computed again from position 0 (one that reads
// activations computes every position, so it never starts after a cached prefix), and each pass delivers the
// asked positions in order from the first: rows are written into a ring of `positions` rows, so a later pass
// overwrites an earlier, partial one and memory stays [points, positions, hidden] whatever the preemptions.
// Not thread-safe.
class ActivationCollector {
 public:
  ActivationCollector() = default;
  // `points`: how many activation points each row carries; `positions`: how many positions were asked.
  ActivationCollector(size_t points, size_t positions) : points_(points), positions_(positions) {}

  // A row's activations (none, when the row holds no asked position). Internal when its shape does not match
  // the points asked or the width of earlier rows.
  absl::Status Add(const RowResult& row);
  // Forgets what was delivered (the request starts again elsewhere).
  void Reset();
  // Whether every asked position has been delivered at least once.
  bool complete() const { return delivered_ >= positions_; }
  size_t delivered() const { return delivered_; }
  size_t hidden() const { return hidden_; }
  // One per point: [positions, hidden] f32 in position order, those of the last pass. Leaves the collector empty.
  std::vector<std::vector<float>> Take();

 private:
  size_t points_ = 0;
  size_t positions_ = 0;
  size_t hidden_ = 0;     // known from the first row that carries activations
  size_t delivered_ = 0;  // rows delivered so far, every pass together; the next is written at delivered_ % positions_
  std::vector<std::vector<float>> rings_;  // per point, positions_ x hidden_
};

}  // namespace gemma
