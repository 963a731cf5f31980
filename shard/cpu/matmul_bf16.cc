#include "shard/cpu/matmul_bf16.h"

#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "shard/cpu/dot_product_tiles.h"
#include "shard/model/dtype.h"

namespace gemma {
namespace {

#define GEMMA_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

constexpr int kRows = 4;    // weight rows a tile holds
constexpr int kTokens = 4;  // tokens a tile holds: 16 accumulators
constexpr int64_t kPanelBytes = 256 << 10;  // bf16 x (one column chunk) kept hot in L2 while a thread's rows pass it
constexpr int64_t kChunkColumns = 2048;      // a multiple of 32: only the last chunk has a masked tail

// One 32-value step of R rows of W against T tokens (xb's rows K apart) from column k; with kTail, only the
// values `mask` keeps are real and the rest load as 0. w[R..2R) are the next tile's rows, prefetched at the same
// column.
template <int R, int T, bool kTail>
GEMMA_BF16_TARGET inline __attribute__((always_inline)) void Step(__m512 (&acc)[R][T], const uint16_t* const* w,
                                                                  const uint16_t* xb, int64_t K, int64_t k,
                                                                  __mmask32 mask) {
  __m512bh x[T];
  for (int t = 0; t < T; ++t) {
    x[t] = (__m512bh)(kTail ? _mm512_maskz_loadu_epi16(mask, xb + t * K + k) : _mm512_loadu_si512(xb + t * K + k));
  }
  for (int r = 0; r < R; ++r) {
    __builtin_prefetch(w[r + R] + k);
    const __m512bh wr = (__m512bh)(kTail ? _mm512_maskz_loadu_epi16(mask, w[r] + k) : _mm512_loadu_si512(w[r] + k));
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wr, x[t]);
  }
}

// R rows of W (w[r] at stride) against T tokens of xb (stride K) over columns [k0, k1) (k0 a multiple of 32); one
// accumulator per output, reduced, and added to `out` after the chunks before (`accumulate`). Every output is
// the same sequence of operations whatever R, T and M are: chunks depend on K alone. Full steps run in a loop of
// their own: a mask test per load there keeps the compiler from holding the accumulators in registers.
template <int R, int T>
GEMMA_BF16_TARGET void Tile(const uint16_t* const* w, const uint16_t* xb, int64_t K, int64_t k0, int64_t k1,
                            bool accumulate, float* out, int64_t ldo) {
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  int64_t k = k0;
  for (; k + 32 <= k1; k += 32) Step<R, T, false>(acc, w, xb, K, k, 0);
  if (k < k1) Step<R, T, true>(acc, w, xb, K, k, static_cast<__mmask32>((uint64_t{1} << (k1 - k)) - 1));
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      const float s = _mm512_reduce_add_ps(acc[r][t]);
      out[t * ldo + r] = accumulate ? out[t * ldo + r] + s : s;
    }
  }
}

// Tile<R, T> for a runtime token count 1..T.
template <int R, int T>
GEMMA_BF16_TARGET void TileUpTo(int tokens, const uint16_t* const* w, const uint16_t* xb, int64_t K, int64_t k0,
                                int64_t k1, bool accumulate, float* out, int64_t ldo) {
  if constexpr (T > 1) {
    if (tokens < T) return TileUpTo<R, T - 1>(tokens, w, xb, K, k0, k1, accumulate, out, ldo);
  }
  Tile<R, T>(w, xb, K, k0, k1, accumulate, out, ldo);
}

void Run(const uint16_t* xb, int64_t M, int64_t K, std::span<const MatrixView> weights, float* out, int64_t ldo) {
  // The calling thread's table; the OpenMP threads read it through a pointer (by name they would see their own).
  thread_local std::vector<const uint16_t*> rows;
  ListRows(weights, kRows, [](const MatrixView& v, int64_t r) { return v.data + r * v.stride; }, &rows);
  const uint16_t* const* row_data = rows.data();
  const int64_t total_rows = static_cast<int64_t>(rows.size()) - (rows.empty() ? 0 : kRows);
  const int64_t chunks = (K + kChunkColumns - 1) / kChunkColumns;
  const int64_t chunk_columns = std::min(K, kChunkColumns);
  const int64_t panel = std::max<int64_t>(kTokens, kPanelBytes / (2 * chunk_columns) / kTokens * kTokens);
  ForEachTile<kRows, kTokens>(
      total_rows, M, panel, chunks, [&](int64_t r, int n, int64_t m, int tokens, int64_t c) {
        const int64_t k0 = c * kChunkColumns, k1 = std::min(K, k0 + kChunkColumns);
        if (n == kRows) {
          TileUpTo<kRows, kTokens>(tokens, &row_data[r], xb + m * K, K, k0, k1, c > 0, out + m * ldo + r, ldo);
        } else {
          TileUpTo<1, kTokens>(tokens, &row_data[r], xb + m * K, K, k0, k1, c > 0, out + m * ldo + r, ldo);
        }
      });
}

}  // namespace

bool HasBf16DotProducts() {
  static const bool has = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
  return has;
}

bool MatMulBf16Activations(const float* x, int64_t M, int64_t K, int64_t ldx, std::span<const MatrixView> weights,
                           float* out, int64_t ldo) {
  if (!HasBf16DotProducts() || M <= 0 || K <= 0) return false;
  for (const MatrixView& v : weights) {
    if (v.format != WeightFormat::kBF16) return false;
  }
  // The calling thread's buffer: the OpenMP threads below write it through `xb`, never through their own.
  thread_local std::vector<uint16_t> buffer;
  buffer.resize(M * K);
  uint16_t* xb = buffer.data();
#pragma omp parallel for schedule(static) if (M * K > (int64_t{1} << 16))
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) xb[m * K + k] = F32ToBf16(x[m * ldx + k]);
  }
  Run(xb, M, K, weights, out, ldo);
  return true;
}

}  // namespace gemma
