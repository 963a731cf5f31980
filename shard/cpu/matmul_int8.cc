#include "shard/cpu/matmul_int8.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "shard/cpu/cpu_targets.h"
#include "shard/cpu/dot_product_tiles.h"
#include "shard/cpu/matmul.h"
#include "shard/cpu/matmul_w4a8.h"

namespace gemma {
namespace {

constexpr int kRows = 4;    // weight rows a tile holds
constexpr int kTokens = 4;  // tokens a tile holds: 16 accumulators
constexpr int64_t kPanelBytes = 256 << 10;  // int8 x kept hot in L2 while a thread's rows pass it

struct Tokens {
  const int8_t* q;      // [M, K] codes
  const float* scale;   // [M]
  const int32_t* sum;   // [M]: each row's sum of codes
};

// One 64-byte step of R rows of W against T tokens (x's rows K apart) from column k; with kTail, only the bytes
// `mask` keeps are real and the rest load as 0. With kPrefetch, w[R..2R) (the next tile's rows) are prefetched at
// the same column: only for a panel's last token tiles (see ForEachTile), where it made prompts 7-10% faster.
// vpdpbusd multiplies unsigned by signed bytes: the weights go in as code + 128 (their top bit flipped; a masked 0
// flips to 128, against x's zeros there), and the caller takes 128 times each token's code sum off at the end,
// exactly.
template <int R, int T, bool kTail, bool kPrefetch>
GEMMA_VNNI_TARGET inline __attribute__((always_inline)) void Step(__m512i (&acc)[R][T], const uint8_t* const* w,
                                                                  const int8_t* x, int64_t K, int64_t k,
                                                                  __mmask64 mask) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i xv[T];
  for (int t = 0; t < T; ++t) {
    xv[t] = kTail ? _mm512_maskz_loadu_epi8(mask, x + t * K + k) : _mm512_loadu_si512(x + t * K + k);
  }
  for (int r = 0; r < R; ++r) {
    if constexpr (kPrefetch) __builtin_prefetch(w[r + R] + k);
    const __m512i raw = kTail ? _mm512_maskz_loadu_epi8(mask, w[r] + k) : _mm512_loadu_si512(w[r] + k);
    const __m512i wr = _mm512_xor_si512(raw, flip);
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], wr, xv[t]);
  }
}

// R rows of W against T tokens over all of K. Full steps run in a loop of their own: a mask test per load there
// keeps the compiler from holding the R x T accumulators in registers.
template <int R, int T, bool kPrefetch>
GEMMA_VNNI_TARGET void Tile(const uint8_t* const* w, const float* wscale, const Tokens& x, int64_t m, int64_t K,
                            float* out, int64_t ldo) {
  __m512i acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_si512();
  const int8_t* xm = x.q + m * K;
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) Step<R, T, false, kPrefetch>(acc, w, xm, K, k, 0);
  if (k < K) Step<R, T, true, kPrefetch>(acc, w, xm, K, k, ~uint64_t{0} >> (64 - (K - k)));
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      const int64_t dot = static_cast<int64_t>(_mm512_reduce_add_epi32(acc[r][t])) - 128 * int64_t{x.sum[m + t]};
      out[t * ldo + r] = static_cast<float>(dot) * x.scale[m + t] * wscale[r];
    }
  }
}

void Run(const Tokens& x, int64_t M, int64_t K, std::span<const MatrixView> weights, float* out, int64_t ldo) {
  // The calling thread's tables; the OpenMP threads read them through pointers (by name they would see their own).
  thread_local std::vector<const uint8_t*> rows;
  thread_local std::vector<float> scales;
  ListRows(weights, kRows, [](const MatrixView& v, int64_t r) { return v.codes + r * v.stride; }, &rows);
  ListRows(weights, 0, [](const MatrixView& v, int64_t r) { return v.scales[r]; }, &scales);
  const uint8_t* const* row_codes = rows.data();
  const float* row_scales = scales.data();
  const int64_t panel = std::max<int64_t>(kTokens, kPanelBytes / K / kTokens * kTokens);
  ForEachTile<kRows, kTokens>(static_cast<int64_t>(scales.size()), M, panel, /*chunks=*/1,
                              [&]<int R, int T>(int64_t r, int64_t m, int64_t, bool prefetch) {
                                if (prefetch) {
                                  Tile<R, T, true>(&row_codes[r], &row_scales[r], x, m, K, out + m * ldo + r, ldo);
                                } else {
                                  Tile<R, T, false>(&row_codes[r], &row_scales[r], x, m, K, out + m * ldo + r, ldo);
                                }
                              });
}

}  // namespace

bool HasInt8DotProducts() {
  static const bool has = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
  return has;
}

float QuantizeActivationRow(const float* x, int64_t K, int8_t* q, int32_t* sum) {
  float amax = 0;
  bool finite = true;
  for (int64_t k = 0; k < K; ++k) {
    finite = finite && std::isfinite(x[k]);
    amax = std::max(amax, std::abs(x[k]));
  }
  const float scale = amax / 127.0f;
  const float inv = amax > 0 ? 127.0f / amax : 0.0f;
  if (!finite || !std::isfinite(inv)) {
    // NaN or infinite values, or a row so small its inverse scale overflows: no int8 form; NaN tells the caller.
    std::fill_n(q, K, int8_t{0});
    *sum = 0;
    return std::numeric_limits<float>::quiet_NaN();
  }
  int32_t s = 0;
  for (int64_t k = 0; k < K; ++k) {
    const int32_t c = std::clamp(static_cast<int32_t>(std::nearbyint(x[k] * inv)), -127, 127);
    q[k] = static_cast<int8_t>(c);
    s += c;
  }
  *sum = s;
  return scale;
}

bool MatMulInt8Activations(const float* x, int64_t M, int64_t K, int64_t ldx, std::span<const MatrixView> weights,
                           float* out, int64_t ldo) {
  if (!HasInt8DotProducts() || M <= 0 || K <= 0) return false;
  const bool int4 = Int4Int8Fits(weights, K);
  for (const MatrixView& v : weights) {
    if (v.format != WeightFormat::kInt8 && !int4) return false;
  }
  // The calling thread's buffers: the OpenMP threads below write them through pointers, never their own.
  thread_local std::vector<int8_t> codes;
  thread_local std::vector<float> scale;
  thread_local std::vector<int32_t> sum;
  codes.resize(M * K);
  scale.resize(M);
  sum.resize(M);
  int8_t* q = codes.data();
  float* s = scale.data();
  int32_t* total = sum.data();
#pragma omp parallel for schedule(static) if (M * K > (int64_t{1} << 16))
  for (int64_t m = 0; m < M; ++m) s[m] = QuantizeActivationRow(x + m * ldx, K, q + m * K, &total[m]);
  if (int4) {
    MatMulInt4Int8(q, s, M, K, weights, out, ldo);
  } else {
    Run(Tokens{q, s, total}, M, K, weights, out, ldo);
  }
  // Rows with no int8 form (their codes are 0) are carried by the f32 kernel, each run of them in one call (its
  // rows' results do not depend on the call), so the other rows' results stay what they would be without them.
  for (int64_t m = 0; m < M;) {
    int64_t end = m;
    while (end < M && std::isnan(s[end])) ++end;
    if (end > m) MatMul(x + m * ldx, end - m, K, ldx, weights, out + m * ldo, ldo);
    m = std::max(end, m + 1);
  }
  return true;
}

}  // namespace gemma
