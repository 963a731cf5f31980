// How the dot-product kernels (matmul_bf16.cc, matmul_int8.cc, matmul_w4a8.cc) walk a product: each OpenMP
// thread takes one contiguous range of the weight rows, and the tokens go in panels whose x (one column chunk of
// it) stays in L2 while a thread's rows pass it.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "shard/model/matrix_view.h"

namespace gemma {

// Every output row of `weights` in output order, as `row_of(view, r)` gives it, then the last one again `pad`
// times: a tile of `pad` rows prefetches the rows of the next tile (hardware prefetchers stop at 4 KB boundaries,
// and a decode row of 2 KB is over before one catches on) without a bounds check. Empty for no rows.
template <typename Row, typename RowOf>
void ListRows(std::span<const MatrixView> weights, int pad, const RowOf& row_of, std::vector<Row>* rows) {
  rows->clear();
  for (const MatrixView& v : weights) {
    for (int64_t r = 0; r < v.rows; ++r) rows->push_back(row_of(v, r));
  }
  if (!rows->empty()) rows->insert(rows->end(), pad, rows->back());
}

// tile.template operator()<R, T>(row, m, chunk, prefetch) with the tile's shape as template arguments (R = rows:
// kRows or 1, T = tokens: 1..kTokens), so its accumulators are an array of fixed size that the compiler keeps in
// registers.
template <int kRows, int kTokens, typename Tile>
inline void CallTile(const Tile& tile, int rows, int tokens, int64_t row, int64_t m, int64_t chunk, bool prefetch) {
  if constexpr (kTokens > 1) {
    if (tokens < kTokens) return CallTile<kRows, kTokens - 1>(tile, rows, tokens, row, m, chunk, prefetch);
  }
  if (rows == kRows) {
    tile.template operator()<kRows, kTokens>(row, m, chunk, prefetch);
  } else {
    tile.template operator()<1, kTokens>(row, m, chunk, prefetch);
  }
}

// Calls tile.template operator()<R, T>(row, m, chunk, prefetch) (see CallTile) for every tile and column chunk: R
// (kRows, or 1 at a range's end) weight rows from `row`, against T (1..kTokens) tokens from `m`, over column chunk
// `chunk` of `chunks`, panel by panel of at most `panel` tokens. A tile's chunks come in order, each after the one
// before. Within a panel a chunk is done for every row before the next begins: that chunk of the panel's x stays in L2
// while the rows pass, and a long row (a down projection's) no longer makes the panel a handful of tokens, each panel
// reading all the weights again. `prefetch` is true for the last two token tiles of a panel (every tile of a decode's
// one or two): only then is the next row tile near, and a kernel that prefetches it earlier crowds L1 with it while the
// current rows still pass the panel (bf16 weights, 16 KB a tile: their products 5-25% slower). Run by every thread of
// an OpenMP team it opens itself.
template <int kRows, int kTokens, typename Tile>
void ForEachTile(int64_t total_rows, int64_t M, int64_t panel, int64_t chunks, const Tile& tile) {
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t begin = total_rows * tid / nt, end = total_rows * (tid + 1) / nt;
    for (int64_t m0 = 0; m0 < M; m0 += panel) {
      const int64_t m1 = std::min(M, m0 + panel);
      for (int64_t c = 0; c < chunks; ++c) {
        int64_t r = begin;
        for (; r + kRows <= end; r += kRows) {
          for (int64_t m = m0; m < m1; m += kTokens) {
            CallTile<kRows, kTokens>(tile, kRows, static_cast<int>(std::min<int64_t>(kTokens, m1 - m)), r, m, c,
                                     m + 2 * kTokens >= m1);
          }
        }
        for (; r < end; ++r) {
          for (int64_t m = m0; m < m1; m += kTokens) {
            CallTile<kRows, kTokens>(tile, 1, static_cast<int>(std::min<int64_t>(kTokens, m1 - m)), r, m, c,
                                     m + 2 * kTokens >= m1);
          }
        }
      }
    }
  }
}

}  // namespace gemma
