// A non-owning view of a bf16 weight matrix: the shape every backend reads weights through.
#pragma once

#include <cstdint>

namespace gemma {

// A bf16 matrix [rows, cols] whose rows are `stride` elements apart (a column
// slice of a larger matrix has stride > cols). Does not own its memory; a plain
// value, safe to copy and to read from any thread while the memory lives.
struct MatrixView {
  const uint16_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t stride = 0;
};

}  // namespace gemma
