// How the prompt-row kernels (matmul_bf16.cc, matmul_int8.cc) walk a product: each OpenMP thread streams one
// contiguous range of the weight rows in memory order, and the tokens go in panels small enough to stay in L2
// while a thread's rows pass them.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace gemma {

// Calls tile(row, rows, m, tokens) for every tile: `rows` (kRows, or 1 at a range's end) weight rows from `row`,
// against `tokens` (1..kTokens) tokens from `m`, panel by panel of at most `panel` tokens. Run by every thread of
// an OpenMP team it opens itself.
template <int kRows, int kTokens, typename Tile>
void ForEachPromptTile(int64_t total_rows, int64_t M, int64_t panel, const Tile& tile) {
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t begin = total_rows * tid / nt, end = total_rows * (tid + 1) / nt;
    for (int64_t m0 = 0; m0 < M; m0 += panel) {
      const int64_t m1 = std::min(M, m0 + panel);
      int64_t r = begin;
      for (; r + kRows <= end; r += kRows) {
        for (int64_t m = m0; m < m1; m += kTokens) tile(r, kRows, m, static_cast<int>(std::min<int64_t>(kTokens, m1 - m)));
      }
      for (; r < end; ++r) {
        for (int64_t m = m0; m < m1; m += kTokens) tile(r, 1, m, static_cast<int>(std::min<int64_t>(kTokens, m1 - m)));
      }
    }
  }
}

}  // namespace gemma
