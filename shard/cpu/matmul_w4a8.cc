#include "shard/cpu/matmul_w4a8.h"

#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "shard/cpu/cpu_targets.h"
#include "shard/cpu/dot_product_tiles.h"

namespace gemma {
namespace {

constexpr int kRows = 4;    // weight rows a tile holds
constexpr int kTokens = 4;  // tokens a tile holds: 16 accumulators
constexpr int64_t kBlock = 128;  // elements a step takes: 64 packed bytes, the low nibbles (even elements) and
                                 // the high ones (odd elements) unpacked into one vector each
constexpr int64_t kPanelBytes = 256 << 10;  // x kept hot in L2 while a thread's rows pass it

struct Int4Row {
  const uint8_t* codes;
  const float* scales;
  const float* zeros;
};

// Each token's codes in the order the nibbles unpack: every 128-element block as its 64 even elements, then its
// 64 odd ones, zero past K (a row is Kp long); and each group's sum of codes, for the zero points.
struct Tokens {
  const int8_t* x;           // [M, Kp]
  const float* group_sums;   // [M, G]
  const float* scale;        // [M]
  int64_t Kp, G;
};

// Block b (n <= kBlock elements from b * kBlock) of R rows against T tokens: the integer sums of the block, lane
// by lane, times each lane's group scale, into the f32 accumulators. Lane j holds elements 8j..8j+7 of the block
// (four even ones from the low nibbles, four odd from the high), all in group 8j / group_size of it. With kTail,
// only the block's n elements load (the rest as 0). With kPrefetch, w[R..2R) (the next tile's rows) are prefetched:
// only for a panel's last token tiles (see ForEachTile).
template <int R, int T, bool kTail, bool kPrefetch>
GEMMA_VNNI_TARGET inline __attribute__((always_inline)) void Step(__m512 (&acc)[R][T], const Int4Row* w,
                                                                  const Tokens& x, int64_t m, int64_t b, int64_t n,
                                                                  int group_size, __m512i lane_group) {
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const int64_t groups_per_block = kBlock / group_size;
  const __mmask64 byte_mask = kTail ? ~uint64_t{0} >> (64 - n / 2) : ~uint64_t{0};
  const __mmask16 scale_mask = static_cast<__mmask16>((1u << (kTail ? n / group_size : groups_per_block)) - 1);
  __m512i even[T], odd[T];
  for (int t = 0; t < T; ++t) {
    const int8_t* xt = x.x + (m + t) * x.Kp + b * kBlock;
    even[t] = _mm512_loadu_si512(xt);
    odd[t] = _mm512_loadu_si512(xt + 64);
  }
  for (int r = 0; r < R; ++r) {
    if constexpr (kPrefetch) __builtin_prefetch(w[r + R].codes + b * 64);
    const uint8_t* p = w[r].codes + b * 64;
    const __m512i packed = kTail ? _mm512_maskz_loadu_epi8(byte_mask, p) : _mm512_loadu_si512(p);
    const __m512i lo = _mm512_and_si512(packed, nibble);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);
    const __m512 scale = _mm512_permutexvar_ps(
        lane_group, _mm512_maskz_loadu_ps(scale_mask, w[r].scales + b * groups_per_block));
    for (int t = 0; t < T; ++t) {
      const __m512i sum = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, even[t]), hi, odd[t]);
      acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[r][t]);
    }
  }
}

// sum_g scale[g] * zero[g] * group_sums[g] over a row's G groups: the zero points' part of its product with a token.
GEMMA_VNNI_TARGET float ZeroTerm(const Int4Row& w, const float* group_sums, int64_t G) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; g += 16) {
    const __mmask16 mask = G - g >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (G - g)) - 1);
    const __m512 sz =
        _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, w.scales + g), _mm512_maskz_loadu_ps(mask, w.zeros + g));
    acc = _mm512_fmadd_ps(sz, _mm512_maskz_loadu_ps(mask, group_sums + g), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

template <int R, int T, bool kPrefetch>
GEMMA_VNNI_TARGET void Tile(const Int4Row* w, const Tokens& x, int64_t m, int64_t K, int group_size, float* out,
                            int64_t ldo) {
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  // Lane j of a block's sums is in the block's group 8j / group_size.
  const __m512i lane_group = _mm512_srli_epi32(_mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9,
                                                                                    10, 11, 12, 13, 14, 15),
                                                                  _mm512_set1_epi32(8)),
                                               __builtin_ctz(static_cast<unsigned>(group_size)));
  const int64_t full = K / kBlock;
  for (int64_t b = 0; b < full; ++b) Step<R, T, false, kPrefetch>(acc, w, x, m, b, kBlock, group_size, lane_group);
  if (K > full * kBlock) Step<R, T, true, kPrefetch>(acc, w, x, m, full, K - full * kBlock, group_size, lane_group);
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      const float zeros = ZeroTerm(w[r], x.group_sums + (m + t) * x.G, x.G);
      out[t * ldo + r] = x.scale[m + t] * (_mm512_reduce_add_ps(acc[r][t]) - zeros);
    }
  }
}

}  // namespace

bool Int4Int8Fits(std::span<const MatrixView> weights, int64_t K) {
  if (weights.empty() || K <= 0) return false;
  const int g = weights[0].group_size;
  if (g < 32 || kBlock % g != 0 || K % g != 0) return false;
  for (const MatrixView& v : weights) {
    if (v.format != WeightFormat::kInt4 || v.group_size != g) return false;
  }
  return true;
}

void MatMulInt4Int8(const int8_t* q, const float* xs, int64_t M, int64_t K, std::span<const MatrixView> weights,
                    float* out, int64_t ldo) {
  const int group_size = weights[0].group_size;
  const int64_t Kp = (K + kBlock - 1) / kBlock * kBlock, G = K / group_size;
  // The calling thread's buffers and table; the OpenMP threads read them through pointers (by name they would see
  // their own).
  thread_local std::vector<int8_t> reordered;
  thread_local std::vector<float> group_sums;
  thread_local std::vector<Int4Row> rows;
  reordered.assign(M * Kp, 0);
  group_sums.resize(M * G);
  int8_t* xr = reordered.data();
  float* sums = group_sums.data();
#pragma omp parallel for schedule(static) if (M * K > (int64_t{1} << 16))
  for (int64_t m = 0; m < M; ++m) {
    const int8_t* src = q + m * K;
    int8_t* dst = xr + m * Kp;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t b = k / kBlock, i = k % kBlock;
      dst[b * kBlock + (i % 2) * 64 + i / 2] = src[k];
    }
    for (int64_t g = 0; g < G; ++g) {
      int32_t s = 0;
      for (int64_t k = g * group_size; k < (g + 1) * group_size; ++k) s += src[k];
      sums[m * G + g] = static_cast<float>(s);
    }
  }
  ListRows(weights, kRows, [](const MatrixView& v, int64_t r) {
    return Int4Row{v.codes + r * (v.stride / 2), v.scales + r * v.scale_stride, v.zeros + r * v.scale_stride};
  }, &rows);
  const Int4Row* table = rows.data();
  int64_t total_rows = 0;
  for (const MatrixView& v : weights) total_rows += v.rows;
  const Tokens x{xr, sums, xs, Kp, G};
  const int64_t panel = std::max<int64_t>(kTokens, kPanelBytes / Kp / kTokens * kTokens);
  auto tile = [&]<int R, int T>(int64_t r, int64_t m, int64_t, bool prefetch) {
    if (prefetch) {
      Tile<R, T, true>(&table[r], x, m, K, group_size, out + m * ldo + r, ldo);
    } else {
      Tile<R, T, false>(&table[r], x, m, K, group_size, out + m * ldo + r, ldo);
    }
  };
  ForEachTile<kRows, kTokens>(total_rows, M, panel, /*chunks=*/1, tile);
}

}  // namespace gemma
