#include "shard/cpu/matmul_bf16.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <vector>

#include "shard/cpu/cpu_targets.h"
#include "shard/cpu/dot_product_tiles.h"
#include "shard/model/dtype.h"

namespace gemma {
namespace {

constexpr int kRows = 4;    // weight rows a tile holds
constexpr int kTokens = 4;  // tokens a tile holds: 16 accumulators
constexpr int64_t kPanelBytes = 256 << 10;  // bf16 x (one column chunk) kept hot in L2 while a thread's rows pass it
constexpr int64_t kChunkColumns = 2048;      // a multiple of every format's step: only the last chunk has a tail
static_assert(kChunkColumns % 64 == 0, "a chunk is whole steps of every format (32 or 64 columns)");

// Weight formats the kernel multiplies, each as bf16 vectors of kVectors * 32 columns a step: Load gives a step of
// a row (with a mask, only the columns it keeps, the rest 0) given the Constants a tile sets up once, Order puts a
// step of x into the order of the weights' columns (x is packed once per call), Finish a row's whole sum as its
// output.
struct Bf16Weights {
  static constexpr int kVectors = 1;
  struct Row {
    const uint16_t* w;
  };
  struct Constants {};
  static Row RowOf(const MatrixView& v, int64_t r) { return {v.data + r * v.stride}; }
  static const void* Address(const Row& row, int64_t k) { return row.w + k; }
  template <bool kTail>
  GEMMA_BF16_TARGET static inline __attribute__((always_inline)) void Load(const Constants&, const Row& row,
                                                                           int64_t k, uint64_t mask,
                                                                           __m512bh (&w)[kVectors]) {
    w[0] = (__m512bh)(kTail ? _mm512_maskz_loadu_epi16(static_cast<__mmask32>(mask), row.w + k)
                            : _mm512_loadu_si512(row.w + k));
  }
  // x's step in natural order is already the weights' order.
  GEMMA_BF16_TARGET static inline __attribute__((always_inline)) void Order(__m512bh (&)[kVectors]) {}
  static float Finish(const Row&, float sum) { return sum; }
};

// E4M3 codes as bf16, which holds every E4M3 value exactly (subnormals become normal numbers): 64 codes a step,
// the high and the low byte of each value looked up in 128-entry tables by the code's low 7 bits (vpermi2b), the
// sign OR-ed in, and the bytes interleaved into two vectors of 16-bit lanes. Interleaving works within 128-bit
// lanes, so vector v's lane l holds codes 16l + 8v .. 16l + 8v + 7; x is packed in that order. Sums run over the
// codes' values; Finish applies the row's scale.
struct Fp8Weights {
  static constexpr int kVectors = 2;
  struct Row {
    const uint8_t* codes;
    float scale;
  };
  struct Tables {
    alignas(64) std::array<uint8_t, 128> high, low;
  };
  static const Tables& TablesOnce() {
    static const Tables tables = [] {
      Tables t;
      for (int c = 0; c < 128; ++c) {
        const uint16_t b = F32ToBf16(Fp8E4M3ToF32(static_cast<uint8_t>(c)));
        t.high[c] = static_cast<uint8_t>(b >> 8);
        t.low[c] = static_cast<uint8_t>(b);
      }
      return t;
    }();
    return tables;
  }
  // The tables in registers, and the sign bit.
  struct Constants {
    __m512i high0, high1, low0, low1, sign;
    GEMMA_BF16_TARGET Constants() {
      const Tables& t = TablesOnce();
      high0 = _mm512_load_si512(t.high.data());
      high1 = _mm512_load_si512(t.high.data() + 64);
      low0 = _mm512_load_si512(t.low.data());
      low1 = _mm512_load_si512(t.low.data() + 64);
      sign = _mm512_set1_epi8(static_cast<char>(0x80));
    }
  };
  static Row RowOf(const MatrixView& v, int64_t r) { return {v.codes + r * v.stride, v.scales[r]}; }
  static const void* Address(const Row& row, int64_t k) { return row.codes + k; }
  template <bool kTail>
  GEMMA_BF16_TARGET static inline __attribute__((always_inline)) void Load(const Constants& t, const Row& row,
                                                                           int64_t k, uint64_t mask,
                                                                           __m512bh (&w)[kVectors]) {
    const __m512i c = kTail ? _mm512_maskz_loadu_epi8(mask, row.codes + k) : _mm512_loadu_si512(row.codes + k);
    // high | (c & 0x80): ternary-logic truth table A | (B & C).
    const __m512i high = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(t.high0, c, t.high1), c, t.sign, 0xF8);
    const __m512i low = _mm512_permutex2var_epi8(t.low0, c, t.low1);
    w[0] = (__m512bh)_mm512_unpacklo_epi8(low, high);
    w[1] = (__m512bh)_mm512_unpackhi_epi8(low, high);
  }
  // x's step (columns 0..31, 32..63) into the weights' order: vector 0 takes the even 128-bit lanes of both,
  // vector 1 the odd ones.
  GEMMA_BF16_TARGET static inline __attribute__((always_inline)) void Order(__m512bh (&x)[kVectors]) {
    const __m512i a = (__m512i)x[0], b = (__m512i)x[1];
    x[0] = (__m512bh)_mm512_shuffle_i64x2(a, b, 0x88);
    x[1] = (__m512bh)_mm512_shuffle_i64x2(a, b, 0xDD);
  }
  static float Finish(const Row& row, float sum) { return sum * row.scale; }
};

// One step of R rows of W against T tokens (xb's rows `ldx` apart, packed and padded with zeros to whole steps) from
// column k; with kTail, only the weights `mask` keeps are loaded. rows[R..2R) are the next tile's, prefetched at the
// same column with kPrefetch. One vector a step holds x in registers; with two, x is read from L1 by each product (the
// registers go to the accumulators, the widened weights and the fp8 tables).
template <class W, int R, int T, bool kTail, bool kPrefetch>
GEMMA_BF16_TARGET inline __attribute__((always_inline)) void Step(__m512 (&acc)[R][T], const typename W::Constants& c,
                                                                  const typename W::Row* rows, const uint16_t* xb,
                                                                  int64_t ldx, int64_t k, uint64_t mask) {
  constexpr bool kHoldX = W::kVectors == 1;
  __m512bh x[kHoldX ? T : 1];
  if constexpr (kHoldX) {
    for (int t = 0; t < T; ++t) x[t] = (__m512bh)_mm512_loadu_si512(xb + t * ldx + k);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    if constexpr (kPrefetch) __builtin_prefetch(W::Address(rows[r + R], k));
    __m512bh w[W::kVectors];
    W::template Load<kTail>(c, rows[r], k, mask, w);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      if constexpr (kHoldX) {
        acc[r][t] = _mm512_dpbf16_ps(acc[r][t], w[0], x[t]);
      } else {
#pragma GCC unroll 2
        for (int v = 0; v < W::kVectors; ++v) {
          acc[r][t] = _mm512_dpbf16_ps(acc[r][t], w[v], (__m512bh)_mm512_loadu_si512(xb + t * ldx + k + 32 * v));
        }
      }
    }
  }
}

// R rows of W against T tokens over columns [k0, k1) (k0 a whole number of steps): one accumulator per output,
// reduced, added to `out` after the chunks before (`accumulate`), and finished by the last chunk (`last`). Every
// output is the same sequence of operations whatever R, T and M are: chunks depend on K alone. Full steps run in
// a loop of their own: a mask test per load there keeps the compiler from holding the accumulators in registers.
template <class W, int R, int T>
GEMMA_BF16_TARGET void Tile(const typename W::Row* rows, const uint16_t* xb, int64_t ldx, int64_t k0, int64_t k1,
                            bool accumulate, bool last, float* out, int64_t ldo, bool prefetch) {
  constexpr int64_t kStep = 32 * W::kVectors;
  const typename W::Constants c;
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  int64_t k = k0;
  if (prefetch) {
    for (; k + kStep <= k1; k += kStep) Step<W, R, T, false, true>(acc, c, rows, xb, ldx, k, 0);
  } else {
    for (; k + kStep <= k1; k += kStep) Step<W, R, T, false, false>(acc, c, rows, xb, ldx, k, 0);
  }
  if (k < k1) Step<W, R, T, true, false>(acc, c, rows, xb, ldx, k, (uint64_t{1} << (k1 - k)) - 1);
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      float s = _mm512_reduce_add_ps(acc[r][t]);
      if (accumulate) s = out[t * ldo + r] + s;
      out[t * ldo + r] = last ? W::Finish(rows[r], s) : s;
    }
  }
}

// x rounded to bf16 (round to nearest even, as F32ToBf16; subnormals become zero, as the products would read them)
// in W's order, each token's row padded with zeros to whole steps.
template <class W>
GEMMA_BF16_TARGET void PackRow(const float* x, int64_t K, int64_t ldxb, uint16_t* xb) {
  constexpr int64_t kStep = 32 * W::kVectors;
  for (int64_t k0 = 0; k0 < ldxb; k0 += kStep) {
    __m512bh step[W::kVectors];
    for (int v = 0; v < W::kVectors; ++v) {
      __m512 half[2];
      for (int h = 0; h < 2; ++h) {
        const int64_t k = k0 + 32 * v + 16 * h, left = std::clamp<int64_t>(K - k, 0, 16);
        half[h] = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << left) - 1), x + std::min(k, K));
      }
      step[v] = _mm512_cvtne2ps_pbh(half[1], half[0]);
    }
    W::Order(step);
    for (int v = 0; v < W::kVectors; ++v) _mm512_storeu_si512(xb + k0 + 32 * v, (__m512i)step[v]);
  }
}

template <class W>
const uint16_t* PackX(const float* x, int64_t M, int64_t K, int64_t ldx, int64_t ldxb) {
  // The calling thread's buffer: the OpenMP threads below write it through `xb`, never through their own.
  thread_local std::vector<uint16_t> buffer;
  buffer.resize(M * ldxb);
  uint16_t* xb = buffer.data();
#pragma omp parallel for schedule(static) if (M * K > (int64_t{1} << 16))
  for (int64_t m = 0; m < M; ++m) PackRow<W>(x + m * ldx, K, ldxb, xb + m * ldxb);
  return xb;
}

template <class W>
void Run(const float* x, int64_t M, int64_t K, int64_t ldx, std::span<const MatrixView> weights, float* out,
         int64_t ldo) {
  constexpr int64_t kStep = 32 * W::kVectors;
  const int64_t ldxb = (K + kStep - 1) / kStep * kStep;
  const uint16_t* xb = PackX<W>(x, M, K, ldx, ldxb);
  // The calling thread's table; the OpenMP threads read it through a pointer (by name they would see their own).
  thread_local std::vector<typename W::Row> rows;
  ListRows(weights, kRows, W::RowOf, &rows);
  const typename W::Row* row_data = rows.data();
  const int64_t total_rows = static_cast<int64_t>(rows.size()) - (rows.empty() ? 0 : kRows);
  const int64_t chunks = (K + kChunkColumns - 1) / kChunkColumns;
  const int64_t chunk_columns = std::min(K, kChunkColumns);
  const int64_t panel = std::max<int64_t>(kTokens, kPanelBytes / (2 * chunk_columns) / kTokens * kTokens);
  ForEachTile<kRows, kTokens>(
      total_rows, M, panel, chunks, [&]<int R, int T>(int64_t r, int64_t m, int64_t c, bool prefetch) {
        const int64_t k0 = c * kChunkColumns, k1 = std::min(K, k0 + kChunkColumns);
        Tile<W, R, T>(&row_data[r], xb + m * ldxb, ldxb, k0, k1, c > 0, c + 1 == chunks, out + m * ldo + r, ldo,
                      prefetch);
      });
}

}  // namespace

bool HasBf16DotProducts() {
  // fp8 codes are widened by byte permutes (AVX512-VBMI), which every CPU with AVX512-BF16 but Cooper Lake has;
  // one test for both keeps the kernels under one target.
  static const bool has = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vbmi");
  return has;
}

namespace {

// Multiply-adds a second of kChains independent chains of `op` over `iterations`. 16 chains hide the latency of
// either instruction on every CPU with them (Zen 5's vdpbf16ps needs 12: 6 cycles, two a cycle).
template <class Op>
GEMMA_BF16_TARGET double ChainRate(int64_t iterations, int macs_per_op, Op op) {
  constexpr int kChains = 16;
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = op(acc[c]);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // The sums are kept (a volatile store) so the chains are not optimized away.
  volatile float sink = 0;
  for (int i = 0; i < kChains; ++i) sink = sink + _mm512_reduce_add_ps(acc[i]);
  return static_cast<double>(iterations) * kChains * macs_per_op / secs;
}

GEMMA_BF16_TARGET double DotProductRate(int64_t iterations) {
  // Operands from memory through a volatile read, so the compiler cannot fold the chains.
  volatile uint16_t one = 0x3F80;
  const __m512bh a = (__m512bh)_mm512_set1_epi16(static_cast<int16_t>(one));
  return ChainRate(iterations, 32, [&](__m512 acc) GEMMA_BF16_TARGET { return _mm512_dpbf16_ps(acc, a, a); });
}

GEMMA_BF16_TARGET double FmaRate(int64_t iterations) {
  volatile float one = 1.0f;
  const __m512 a = _mm512_set1_ps(one);
  return ChainRate(iterations, 16, [&](__m512 acc) GEMMA_BF16_TARGET { return _mm512_fmadd_ps(a, a, acc); });
}

}  // namespace

Bf16DotProductRates MeasureBf16DotProductRates() {
  if (!HasBf16DotProducts()) return {};
  // Best of three of each, interleaved, so a moment of load on the core slows both alike. The threshold sits
  // 1.6x under AMD's 2x and 2.5x over Intel's 0.5x, far outside such noise; it is not 1.0 because rounding x
  // costs accuracy, worth paying only for a clear gain.
  Bf16DotProductRates rates;
  for (int r = 0; r < 3; ++r) {
    rates.dot = std::max(rates.dot, DotProductRate(100000));
    rates.fma = std::max(rates.fma, FmaRate(100000));
  }
  return rates;
}

double Bf16DotProductSpeedup() {
  static const double speedup = [] {
    const Bf16DotProductRates rates = MeasureBf16DotProductRates();
    return rates.fma > 0 ? rates.dot / rates.fma : 0.0;
  }();
  return speedup;
}

bool Bf16DotProductsPayOff() { return Bf16DotProductSpeedup() >= kBf16DotProductsWorthIt; }

bool Bf16ActivationsMultiply(WeightFormat format) {
  return HasBf16DotProducts() && (format == WeightFormat::kBF16 || format == WeightFormat::kFp8);
}

bool MatMulBf16Activations(const float* x, int64_t M, int64_t K, int64_t ldx, std::span<const MatrixView> weights,
                           float* out, int64_t ldo) {
  if (M <= 0 || K <= 0 || weights.empty()) return false;
  for (const MatrixView& v : weights) {
    if (!Bf16ActivationsMultiply(v.format)) return false;
  }
  // x is packed per format: a call that mixes them runs one view at a time.
  const bool mixed = std::any_of(weights.begin(), weights.end(),
                                 [&](const MatrixView& v) { return v.format != weights[0].format; });
  if (mixed) {
    for (const MatrixView& v : weights) {
      MatMulBf16Activations(x, M, K, ldx, std::span<const MatrixView>(&v, 1), out, ldo);
      out += v.rows;
    }
    return true;
  }
  if (weights[0].format == WeightFormat::kFp8) {
    Run<Fp8Weights>(x, M, K, ldx, weights, out, ldo);
  } else {
    Run<Bf16Weights>(x, M, K, ldx, weights, out, ldo);
  }
  return true;
}

}  // namespace gemma
