#include "shard/cpu/matmul.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "shard/model/dtype.h"

// Defined once, outside the per-target code, so MatMul can check group sizes against it.
#ifndef GEMMA_SHARD_CPU_MATMUL_CHUNK_COLUMNS_
#define GEMMA_SHARD_CPU_MATMUL_CHUNK_COLUMNS_
namespace gemma {
namespace {
// Columns per chunk (see Operands): a multiple of every int4 group size, so no group straddles two chunks.
constexpr int64_t kChunkColumns = 2048;
std::atomic<MatMulWidening> g_widening{MatMulWidening::kAsMeasured};  // tests change it
}  // namespace
}  // namespace gemma
#endif

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "shard/cpu/matmul.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/aligned_allocator.h"

HWY_BEFORE_NAMESPACE();
namespace gemma {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using DU = hn::RebindToUnsigned<DF>;
using VF = hn::Vec<DF>;

// Register tiles: kTileRows weight rows x kBlockTokens tokens, so each loaded x vector feeds several rows and each
// decoded weight vector several tokens. Even a single token runs kTileRows rows at once: one row alone is one chain
// of dependent FMAs, which caps a thread far below the memory bandwidth once weights decode in a few instructions
// (int8, int4, fp8).
#if HWY_TARGET <= HWY_AVX3
constexpr int kTileRows = 4;
#else
constexpr int kTileRows = 2;
#endif
constexpr int kBlockTokens = 4;
// Bytes of packed x (one column chunk of a panel of tokens) kept hot in L2 while one thread's rows pass it.
constexpr int64_t kPanelBytes = 384 << 10;

// A format's block b holds 2N elements of a row, as two vectors: even/odd (the N even elements of
// [2Nb, 2Nb + 2N), then the N odd ones) where the stored form pairs neighbours (bf16 pairs in a u32, two 4-bit
// codes in a byte): one shift and one mask then split them, no shuffles. Plain (elements [2Nb, 2Nb + N), then
// the next N) elsewhere. x is packed the same way once per call.
enum class Layout { kEvenOdd, kPlain };

void PackX(const float* x, int64_t M, int64_t K, int64_t ldx, int64_t packed_stride, Layout layout, float* xp) {
  const int64_t n2 = 2 * static_cast<int64_t>(hn::Lanes(DF()));
  const int64_t full = K / n2;
#pragma omp parallel for schedule(static) if (M > 4)
  for (int64_t m = 0; m < M; ++m) {
    const float* src = x + m * ldx;
    float* dst = xp + m * packed_stride;
    if (layout == Layout::kPlain) {
      std::copy_n(src, full * n2, dst);
      continue;
    }
    for (int64_t b = 0; b < full; ++b) {
      const float* s = src + b * n2;
      float* d = dst + b * n2;
      for (int64_t i = 0; i < n2 / 2; ++i) {
        d[i] = s[2 * i];
        d[n2 / 2 + i] = s[2 * i + 1];
      }
    }
  }
}

// Weight decoders: block b of row r as two f32 vectors (lo, hi) in the format's layout, dequantized; Scalar gives
// one element of the tail, Finish turns a row's sum into its output. A row is walked in groups of GroupBlocks
// blocks (the whole row for formats with one scale per row); GroupAt prepares what a group's blocks share, once
// per group and row, and Block is given it. kStreamed: blocks come from memory, row after row (prefetched ahead);
// kWidenFromTokenTiles: from how many token tiles over the same rows widening them once pays (0: never; see
// WidenedRowsTimesPanel).
// Formats with one scale per row (or none): a row is one group, and there is nothing to prepare.
struct WholeRowGroups {
  static constexpr bool kStreamed = true;
  static constexpr int kWidenFromTokenTiles = 3;
  struct Group {};
  Group GroupAt(int64_t, int64_t) const { return {}; }
  int64_t GroupBlocks(int64_t full_blocks) const { return full_blocks; }
};

struct Bf16Rows : WholeRowGroups {
  static constexpr Layout kLayout = Layout::kEvenOdd;
  const uint16_t* w;
  int64_t stride;
  explicit Bf16Rows(const MatrixView& m) : w(m.data), stride(m.stride) {}
  const void* Address(int64_t r, int64_t b) const { return w + r * stride + b * 2 * hn::Lanes(DF()); }
  int64_t RowBytes() const { return 2 * stride; }
  HWY_INLINE void Block(int64_t r, int64_t b, const Group&, VF& lo, VF& hi) const {
    const DF df;
    const DU du;
    const auto u = hn::LoadU(du, static_cast<const uint32_t*>(Address(r, b)));
    lo = hn::BitCast(df, hn::ShiftLeft<16>(u));
    hi = hn::BitCast(df, hn::And(u, hn::Set(du, 0xFFFF0000u)));
  }
  float Scalar(int64_t r, int64_t k) const { return Bf16ToF32(w[r * stride + k]); }
  float Finish(int64_t, float sum) const { return sum; }
};

struct F32Rows : WholeRowGroups {
  static constexpr int kWidenFromTokenTiles = 0;  // nothing to widen
  static constexpr Layout kLayout = Layout::kPlain;
  const float* w;
  int64_t stride;
  explicit F32Rows(const MatrixView& m) : w(m.f32), stride(m.stride) {}
  const void* Address(int64_t r, int64_t b) const { return w + r * stride + b * 2 * hn::Lanes(DF()); }
  int64_t RowBytes() const { return 4 * stride; }
  HWY_INLINE void Block(int64_t r, int64_t b, const Group&, VF& lo, VF& hi) const {
    const DF df;
    const float* p = static_cast<const float*>(Address(r, b));
    lo = hn::LoadU(df, p);
    hi = hn::LoadU(df, p + hn::Lanes(df));
  }
  float Scalar(int64_t r, int64_t k) const { return w[r * stride + k]; }
  float Finish(int64_t, float sum) const { return sum; }
};

// Sums code x over the row and scales once at the end: one sign-extending load and one conversion per N codes.
struct Int8Rows : WholeRowGroups {
  static constexpr Layout kLayout = Layout::kPlain;
  const uint8_t* codes;
  const float* scales;
  int64_t stride;
  explicit Int8Rows(const MatrixView& m) : codes(m.codes), scales(m.scales), stride(m.stride) {}
  const void* Address(int64_t r, int64_t b) const { return codes + r * stride + b * 2 * hn::Lanes(DF()); }
  int64_t RowBytes() const { return stride; }
  HWY_INLINE void Block(int64_t r, int64_t b, const Group&, VF& lo, VF& hi) const {
    const DF df;
    const hn::Rebind<int8_t, DF> d8;
    const hn::Rebind<int32_t, DF> d32;
    const int8_t* p = static_cast<const int8_t*>(Address(r, b));
    lo = hn::ConvertTo(df, hn::PromoteTo(d32, hn::LoadU(d8, p)));
    hi = hn::ConvertTo(df, hn::PromoteTo(d32, hn::LoadU(d8, p + hn::Lanes(df))));
  }
  float Scalar(int64_t r, int64_t k) const { return static_cast<float>(static_cast<int8_t>(codes[r * stride + k])); }
  float Finish(int64_t r, float sum) const { return sum * scales[r]; }
};

// E4M3 codes widened in registers: the sign moved up a bit (b + (b & 0x80)) and the byte shifted left by 7 puts the
// sign at bit 15 and exponent and mantissa at bits 13..7 of an f16, which is then the E4M3 value times 2^-8
// exactly, subnormals included (f16's exponent bias is 8 more); F16C widens it to f32. A block's 2N codes go
// through the integer steps as one vector of 16-bit lanes. Sums run over those values and Finish applies 2^8 with
// the row's scale.
struct Fp8Rows : WholeRowGroups {
  static constexpr int kWidenFromTokenTiles = 2;  // its widening costs most
  static constexpr Layout kLayout = Layout::kPlain;
  const uint8_t* codes;
  const float* scales;
  int64_t stride;
  explicit Fp8Rows(const MatrixView& m) : codes(m.codes), scales(m.scales), stride(m.stride) {}
  const void* Address(int64_t r, int64_t b) const { return codes + r * stride + b * 2 * hn::Lanes(DF()); }
  int64_t RowBytes() const { return stride; }
#if HWY_TARGET == HWY_SCALAR
  // One lane: each code on its own.
  HWY_INLINE void Block(int64_t r, int64_t b, const Group&, VF& lo, VF& hi) const {
    const uint8_t* p = static_cast<const uint8_t*>(Address(r, b));
    lo = hn::Set(DF(), Fp8E4M3ToF32(p[0]) * (1.0f / 256.0f));
    hi = hn::Set(DF(), Fp8E4M3ToF32(p[1]) * (1.0f / 256.0f));
  }
#else
  HWY_INLINE void Block(int64_t r, int64_t b, const Group&, VF& lo, VF& hi) const {
    const DF df;
    const hn::Repartition<uint16_t, DF> d16;  // 2N lanes
    const hn::Rebind<uint8_t, decltype(d16)> d8;
    const hn::Repartition<hwy::float16_t, DF> dh;
    const hn::Half<decltype(dh)> dh_half;
    const auto c = hn::PromoteTo(d16, hn::LoadU(d8, static_cast<const uint8_t*>(Address(r, b))));
    const auto h = hn::BitCast(dh, hn::ShiftLeft<7>(hn::Add(c, hn::And(c, hn::Set(d16, 0x80)))));
    lo = hn::PromoteTo(df, hn::LowerHalf(dh_half, h));
    hi = hn::PromoteTo(df, hn::UpperHalf(dh_half, h));
  }
#endif
  float Scalar(int64_t r, int64_t k) const { return Fp8E4M3ToF32(codes[r * stride + k]) * (1.0f / 256.0f); }
  float Finish(int64_t r, float sum) const { return sum * (scales[r] * 256.0f); }
};

// Dequantized in registers, (code - zero) * scale exactly as ElementAt gives it, so a row's products are the f32
// kernel's over the dequantized matrix. Needs 2N <= the group size (32 at the least; 2N is 32 at most), K a whole
// number of groups.
struct Int4Rows {
  static constexpr bool kStreamed = true;
  static constexpr int kWidenFromTokenTiles = 3;
  static constexpr Layout kLayout = Layout::kEvenOdd;
  const uint8_t* codes;
  const float* scales;
  const float* zeros;
  int64_t row_bytes, scale_stride, group_blocks;
  explicit Int4Rows(const MatrixView& m)
      : codes(m.codes), scales(m.scales), zeros(m.zeros), row_bytes(m.stride / 2), scale_stride(m.scale_stride),
        group_blocks(m.group_size / (2 * static_cast<int64_t>(hn::Lanes(DF())))) {}
  const void* Address(int64_t r, int64_t b) const { return codes + r * row_bytes + b * hn::Lanes(DF()); }
  int64_t RowBytes() const { return row_bytes; }
#if HWY_TARGET <= HWY_AVX3
  // 16 lanes hold all 16 codes' values, computed as below; a permute per vector then replaces the conversion,
  // the subtraction and the multiply. Batch 8 and prompts are bound by the work per weight (docs/BENCHMARKS.md),
  // so the table is made once per group, not per block.
  struct Group {
    VF table;
  };
  HWY_INLINE Group GroupAt(int64_t r, int64_t g) const {
    const DF df;
    static_assert(hn::MaxLanes(DF()) == 16, "the int4 table needs 16 f32 lanes");
    const VF zero = hn::Set(df, zeros[r * scale_stride + g]);
    return {hn::Mul(hn::Sub(hn::Iota(df, 0), zero), hn::Set(df, scales[r * scale_stride + g]))};
  }
#else
  // Scalars, broadcast by each block: sixteen vector registers leave no room to hold them as vectors.
  struct Group {
    float scale, zero;
  };
  HWY_INLINE Group GroupAt(int64_t r, int64_t g) const {
    return {scales[r * scale_stride + g], zeros[r * scale_stride + g]};
  }
#endif
  HWY_INLINE void Block(int64_t r, int64_t b, const Group& group, VF& lo, VF& hi) const {
    const hn::Rebind<uint8_t, DF> d8;
    const hn::Rebind<uint32_t, DF> du32;
    const auto bytes = hn::PromoteTo(du32, hn::LoadU(d8, static_cast<const uint8_t*>(Address(r, b))));
#if HWY_TARGET <= HWY_AVX3
    // vpermps reads only an index's low 4 bits, so the low code needs no mask (Highway's TableLookupLanes asks
    // for indices in range, hence the intrinsic).
    lo = VF{_mm512_permutexvar_ps(bytes.raw, group.table.raw)};
    hi = VF{_mm512_permutexvar_ps(hn::ShiftRight<4>(bytes).raw, group.table.raw)};
#else
    const DF df;
    const hn::Rebind<int32_t, DF> di32;
    const VF scale = hn::Set(df, group.scale), zero = hn::Set(df, group.zero);
    lo = hn::Mul(hn::Sub(hn::ConvertTo(df, hn::BitCast(di32, hn::And(bytes, hn::Set(du32, 0xFu)))), zero), scale);
    hi = hn::Mul(hn::Sub(hn::ConvertTo(df, hn::BitCast(di32, hn::ShiftRight<4>(bytes))), zero), scale);
#endif
  }
  float Scalar(int64_t, int64_t) const { return 0.0f; }  // no tail: K is whole groups of whole blocks
  float Finish(int64_t, float sum) const { return sum; }
  int64_t GroupBlocks(int64_t) const { return group_blocks; }
};

// One block of R rows into the accumulators of T tokens.
template <int R, int T, class Rows>
HWY_INLINE void AccumulateBlock(const Rows& w, int64_t r0, int64_t b, const typename Rows::Group (&groups)[R],
                                int64_t ahead, const float* HWY_RESTRICT xp, int64_t xp_stride, VF (&acc)[R][T]) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  VF lo[R], hi[R];
  for (int r = 0; r < R; ++r) {
    // Hardware prefetchers stop at 4 KB boundaries; a software prefetch ahead keeps the weight stream flowing:
    // the same place in the next tile of rows (4 KB on, into the next row, for a lone row).
    if constexpr (Rows::kStreamed) __builtin_prefetch(static_cast<const char*>(w.Address(r0 + r, b)) + ahead);
    w.Block(r0 + r, b, groups[r], lo[r], hi[r]);
  }
  for (int t = 0; t < T; ++t) {
    const VF xa = hn::Load(df, xp + t * xp_stride + b * 2 * N);
    const VF xb = hn::Load(df, xp + t * xp_stride + b * 2 * N + N);
    for (int r = 0; r < R; ++r) acc[r][t] = hn::MulAdd(hi[r], xb, hn::MulAdd(lo[r], xa, acc[r][t]));
  }
}

// Calls fn(b, groups) for blocks [b_begin, b_end) of R rows from r0, in order, each group's Group prepared once
// (b_begin starts a group, or the range lies in one group).
template <int R, class Rows, class Fn>
HWY_INLINE void ForEachBlock(const Rows& w, int64_t r0, int64_t b_begin, int64_t b_end, int64_t full_blocks,
                             const Fn& fn) {
  const int64_t group_blocks = std::max<int64_t>(w.GroupBlocks(full_blocks), 1);
  for (int64_t b0 = b_begin, g = b_begin / group_blocks; b0 < b_end; b0 += group_blocks, ++g) {
    const int64_t b1 = std::min(b_end, b0 + group_blocks);
    typename Rows::Group groups[R];
    for (int r = 0; r < R; ++r) groups[r] = w.GroupAt(r0 + r, g);
    for (int64_t b = b0; b < b1; ++b) fn(b, groups);
  }
}

// One call's operands: packed x and its tokens, the output, and how K is cut. Columns go in chunks of
// kChunkColumns (whole blocks; the tail, past the last whole block, ends the last chunk): a chunk's sum is reduced
// and added to the output after those before it. Chunks depend on K alone, so every output is the same sequence
// of operations whatever M, the tiles and the loop order are, and results do not depend on batching.
struct Operands {
  const float* xp;
  int64_t xp_stride;
  const float* x;
  int64_t ldx;
  int64_t K, full_blocks, chunk_blocks, chunks;
  float* out;
  int64_t ldo;
};

// Blocks [b_begin, b_end) of R rows (from r0 of `w`) against T tokens (from m) into acc: one chain of FMAs per
// output.
template <int R, int T, class Rows>
HWY_INLINE void AccumulateBlocks(const Rows& w, int64_t r0, int64_t m, int64_t b_begin, int64_t b_end,
                                 const Operands& o, VF (&acc)[R][T]) {
  const int64_t ahead = R == 1 ? 4096 : R * w.RowBytes();
  const float* HWY_RESTRICT xp = o.xp + m * o.xp_stride;
  ForEachBlock<R>(w, r0, b_begin, b_end, o.full_blocks, [&](int64_t b, const typename Rows::Group(&groups)[R]) {
    AccumulateBlock<R, T>(w, r0, b, groups, ahead, xp, o.xp_stride, acc);
  });
}

// Column chunk c's sums of R rows against T tokens, reduced and added to the chunks before; the last chunk adds
// the scalar tail and finishes (scales) the sum.
template <int R, int T, class Rows>
HWY_INLINE void FinishChunk(const Rows& w, int64_t r0, int64_t m, int64_t c, const Operands& o, VF (&acc)[R][T]) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  float* HWY_RESTRICT out = o.out + m * o.ldo + r0;
  const float* HWY_RESTRICT x = o.x + m * o.ldx;
  const bool last = c + 1 == o.chunks;
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      float s = hn::GetLane(hn::SumOfLanes(df, acc[r][t]));
      if (c > 0) s = out[t * o.ldo + r] + s;
      if (last) {
        // An explicit fma: left to itself the compiler contracts (or vectorizes) this loop differently in each
        // instantiation, and batch sizes would no longer agree bit for bit.
        for (int64_t k = o.full_blocks * 2 * N; k < o.K; ++k) s = std::fma(w.Scalar(r0 + r, k), x[t * o.ldx + k], s);
        s = w.Finish(r0 + r, s);
      }
      out[t * o.ldo + r] = s;
    }
  }
}

template <int R, int T>
HWY_INLINE void ZeroAll(VF (&acc)[R][T]) {
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = hn::Zero(DF());
}

// R weight rows against T tokens over column chunk c, streamed from the weights.
template <int R, int T, class Rows>
HWY_INLINE void Tile(const Rows& w, int64_t r0, int64_t m, int64_t c, const Operands& o) {
  VF acc[R][T];
  ZeroAll(acc);
  AccumulateBlocks<R, T>(w, r0, m, c * o.chunk_blocks, std::min(o.full_blocks, (c + 1) * o.chunk_blocks), o, acc);
  FinishChunk<R, T>(w, r0, m, c, o, acc);
}

// fn.template operator()<T>() for a runtime token count 1..kMax.
template <int kMax, class Fn>
HWY_INLINE void WithTokens(int tokens, const Fn& fn) {
  if constexpr (kMax > 1) {
    if (tokens < kMax) return WithTokens<kMax - 1>(tokens, fn);
  }
  fn.template operator()<kMax>();
}

// Token tiles that stream the same rows each widen the weights again: for fp8 that takes as many instructions as
// 4 tokens' multiply-adds, for the others a third to a half. So from a format's kWidenFromTokenTiles on, a tile's
// rows are widened once per stretch of kWidenedColumns into f32 (ForEachBlock's order: block, row, lo, hi) and each
// token tile reads them from L1 (measured on [2048, 16384] matrices, 2 threads: prompts of 64 tokens 1.13-1.19x
// faster for int8 and int4, 1.5x for fp8, bf16's 16 tokens 1.1x; fp8 batch 8 1.15x; int8 and int4 batch 8 no
// faster, so they start at 3). Each output's chain of multiply-adds is the streamed one, so results do not change.
// Stretches start at multiples of 512 columns: group boundaries for int4 groups up to 512; a larger group holds
// whole stretches.
constexpr int64_t kWidenedColumns = 512;  // divides kChunkColumns
static_assert(kChunkColumns % kWidenedColumns == 0, "a chunk is whole stretches");

// A stretch of R rows widened, read as a format.
template <int R>
struct WidenedRows : WholeRowGroups {
  static constexpr bool kStreamed = false;
  const float* data;
  int64_t r0, b0;
  const void* Address(int64_t r, int64_t b) const {
    return data + ((b - b0) * R + (r - r0)) * 2 * static_cast<int64_t>(hn::Lanes(DF()));
  }
  int64_t RowBytes() const { return 0; }
  HWY_INLINE void Block(int64_t r, int64_t b, const Group&, VF& lo, VF& hi) const {
    const float* p = static_cast<const float*>(Address(r, b));
    lo = hn::Load(DF(), p);
    hi = hn::Load(DF(), p + hn::Lanes(DF()));
  }
};

// Rows [r0, r0 + R) against tokens [m0, m1) (token_tiles tiles) over chunks [c_begin, c_end), a stretch widened
// at a time.
template <int R, class Rows>
void WidenedRowsTimesPanel(const Rows& w, int64_t r0, int64_t m0, int64_t m1, int64_t token_tiles, int64_t c_begin,
                           int64_t c_end, const Operands& o) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t stretch_blocks = kWidenedColumns / (2 * N);
  thread_local hwy::AlignedFreeUniquePtr<float[]> widened = hwy::AllocateAligned<float>(kTileRows * kWidenedColumns);
  // Each token tile's sums between stretches of a chunk, whole vectors: the chains go on exactly as in Tile.
  thread_local hwy::AlignedFreeUniquePtr<float[]> carried;
  thread_local int64_t carried_size = 0;
  const bool several_stretches = std::min(o.full_blocks, o.chunk_blocks) > stretch_blocks;
  if (several_stretches && carried_size < token_tiles * kTileRows * kBlockTokens * N) {
    carried_size = token_tiles * kTileRows * kBlockTokens * N;
    carried = hwy::AllocateAligned<float>(carried_size);
  }
  const int64_t ahead = R == 1 ? 4096 : R * w.RowBytes();
  float* HWY_RESTRICT dst = widened.get();
  for (int64_t c = c_begin; c < c_end; ++c) {
    const int64_t cb = c * o.chunk_blocks, ce = std::min(o.full_blocks, cb + o.chunk_blocks);
    for (int64_t sb = cb; sb < ce; sb += stretch_blocks) {
      const int64_t se = std::min(ce, sb + stretch_blocks);
      ForEachBlock<R>(w, r0, sb, se, o.full_blocks, [&](int64_t b, const typename Rows::Group(&groups)[R]) {
        for (int r = 0; r < R; ++r) {
          __builtin_prefetch(static_cast<const char*>(w.Address(r0 + r, b)) + ahead);
          VF lo, hi;
          w.Block(r0 + r, b, groups[r], lo, hi);
          float* p = dst + ((b - sb) * R + r) * 2 * N;
          hn::Store(lo, df, p);
          hn::Store(hi, df, p + N);
        }
      });
      const WidenedRows<R> widened_rows{{}, dst, r0, sb};
      for (int64_t i = 0; i < token_tiles; ++i) {
        const int64_t m = m0 + i * kBlockTokens;
        float* carry = carried.get() + i * R * kBlockTokens * N;
        WithTokens<kBlockTokens>(static_cast<int>(std::min<int64_t>(kBlockTokens, m1 - m)), [&]<int T>() {
          VF acc[R][T];
          for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) acc[r][t] = sb == cb ? hn::Zero(df) : hn::Load(df, carry + (r * T + t) * N);
          AccumulateBlocks<R, T>(widened_rows, r0, m, sb, se, o, acc);
          if (se == ce) return FinishChunk<R, T>(w, r0, m, c, o, acc);
          for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) hn::Store(acc[r][t], df, carry + (r * T + t) * N);
        });
      }
    }
  }
}

// Rows [r_begin, r_end) of one view against tokens [m0, m1), chunks [c_begin, c_end) (each row tile's in order).
template <class Rows>
void RowsTimesPanel(const Rows& w, int64_t r_begin, int64_t r_end, int64_t m0, int64_t m1, int64_t c_begin,
                    int64_t c_end, const Operands& o) {
  const int64_t token_tiles = (m1 - m0 + kBlockTokens - 1) / kBlockTokens;
  const MatMulWidening widening = g_widening.load(std::memory_order_relaxed);
  // A row with no whole block has nothing to widen (and its only chunk is finished by Tile).
  const bool widen_once =
      o.full_blocks > 0 && (widening == MatMulWidening::kAlways ||
                            (widening == MatMulWidening::kAsMeasured && token_tiles >= Rows::kWidenFromTokenTiles));
  auto tiles = [&]<int R>(int64_t r) {
    if constexpr (Rows::kWidenFromTokenTiles > 0) {
      if (widen_once) return WidenedRowsTimesPanel<R>(w, r, m0, m1, token_tiles, c_begin, c_end, o);
    }
    for (int64_t c = c_begin; c < c_end; ++c) {
      for (int64_t m = m0; m < m1; m += kBlockTokens) {
        WithTokens<kBlockTokens>(static_cast<int>(std::min<int64_t>(kBlockTokens, m1 - m)),
                                 [&]<int T>() { Tile<R, T>(w, r, m, c, o); });
      }
    }
  };
  int64_t r = r_begin;
  for (; r + kTileRows <= r_end; r += kTileRows) tiles.template operator()<kTileRows>(r);
  for (; r < r_end; ++r) tiles.template operator()<1>(r);
}

Layout LayoutOf(WeightFormat format) {
  return format == WeightFormat::kBF16 || format == WeightFormat::kInt4 ? Layout::kEvenOdd : Layout::kPlain;
}

void ViewTimesPanel(const MatrixView& mv, int64_t r_begin, int64_t r_end, int64_t m0, int64_t m1, int64_t c_begin,
                    int64_t c_end, const Operands& o) {
  switch (mv.format) {
    case WeightFormat::kBF16:
      return RowsTimesPanel(Bf16Rows(mv), r_begin, r_end, m0, m1, c_begin, c_end, o);
    case WeightFormat::kF32:
      return RowsTimesPanel(F32Rows(mv), r_begin, r_end, m0, m1, c_begin, c_end, o);
    case WeightFormat::kInt8:
      return RowsTimesPanel(Int8Rows(mv), r_begin, r_end, m0, m1, c_begin, c_end, o);
    case WeightFormat::kFp8:
      return RowsTimesPanel(Fp8Rows(mv), r_begin, r_end, m0, m1, c_begin, c_end, o);
    case WeightFormat::kInt4:
      return RowsTimesPanel(Int4Rows(mv), r_begin, r_end, m0, m1, c_begin, c_end, o);
  }
}

// All views share one layout (MatMul splits calls that mix them).
void MatMulImpl(const float* x, int64_t M, int64_t K, int64_t ldx, const MatrixView* views, size_t num_views,
                float* out, int64_t ldo) {
  const int64_t n2 = 2 * static_cast<int64_t>(hn::Lanes(DF()));
  const int64_t full_blocks = K / n2;
  const int64_t xp_stride = std::max<int64_t>(full_blocks * n2, n2);
  thread_local hwy::AlignedFreeUniquePtr<float[]> packed;
  thread_local int64_t packed_size = 0;
  if (packed_size < M * xp_stride) {
    packed = hwy::AllocateAligned<float>(M * xp_stride);
    packed_size = M * xp_stride;
  }
  float* xp = packed.get();
  PackX(x, M, K, ldx, xp_stride, LayoutOf(views[0].format), xp);
  int64_t total_rows = 0;
  for (size_t v = 0; v < num_views; ++v) total_rows += views[v].rows;
  const int64_t chunk_blocks = kChunkColumns / n2;
  const Operands o{xp, xp_stride, x, ldx, K, full_blocks, chunk_blocks,
                   std::max<int64_t>(1, (full_blocks + chunk_blocks - 1) / chunk_blocks), out, ldo};
  // Tokens per panel: as many as keep one chunk of the panel in L2, whole tiles.
  const int64_t chunk_stride = std::min(xp_stride, kChunkColumns);
  const int64_t panel = std::max<int64_t>(kBlockTokens, kPanelBytes / (chunk_stride * 4) / kBlockTokens * kBlockTokens);
  // Decode batches (up to 8 tokens, whose x fits in L2 whole): each row tile takes its chunks in turn, so every
  // row streams from memory in order. More: a panel's chunk meets every row before the next chunk, so that chunk
  // of x stays in L2 and a long row (a down projection's) does not cut the panel to a few tokens, each panel
  // reading all the weights again (measured on [2048, 16384] int8 and bf16: 1.25-1.3x at 16 and 64 tokens; at 8
  // the two orders were even). Needs kChunkColumns to be a multiple of every int4 group size (32, 64, 128).
  const bool chunk_outer = M > 2 * kBlockTokens;

#pragma omp parallel
  {
    // Each thread takes one contiguous range of rows.
    const int64_t nt = omp_get_num_threads();
    const int64_t tid = omp_get_thread_num();
    const int64_t row_begin = total_rows * tid / nt;
    const int64_t row_end = total_rows * (tid + 1) / nt;
    for (int64_t m0 = 0; m0 < M; m0 += panel) {
      const int64_t m1 = std::min(M, m0 + panel);
      for (int64_t c = 0; c < (chunk_outer ? o.chunks : 1); ++c) {
        const int64_t c_begin = chunk_outer ? c : 0, c_end = chunk_outer ? c + 1 : o.chunks;
        int64_t first_row = 0;
        for (size_t v = 0; v < num_views && first_row < row_end; ++v) {
          const MatrixView& mv = views[v];
          const int64_t r_begin = std::max<int64_t>(row_begin - first_row, 0);
          const int64_t r_end = std::min<int64_t>(row_end - first_row, mv.rows);
          if (r_begin < r_end) {
            Operands view_o = o;
            view_o.out = out + first_row;
            ViewTimesPanel(mv, r_begin, r_end, m0, m1, c_begin, c_end, view_o);
          }
          first_row += mv.rows;
        }
      }
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace gemma
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace gemma {

HWY_EXPORT(MatMulImpl);

void SetMatMulWideningForTest(MatMulWidening widening) { g_widening.store(widening); }

const char* MatMulTarget() {
  const int64_t usable = hwy::SupportedTargets() & HWY_TARGETS;
  return hwy::TargetName(usable & -usable);  // lower bits are the better targets
}

void MatMul(const float* x, int64_t M, int64_t K, int64_t ldx, std::span<const MatrixView> weights, float* out,
            int64_t ldo) {
  if (M <= 0 || weights.empty()) return;
  for (const MatrixView& v : weights) {
    // A 4-bit row is walked group by group, each group whole SIMD blocks: a view that breaks this would read past
    // its row, as would a group cut by a column chunk. Views come from ModelWeights, which only makes whole groups
    // of 32, 64 or 128.
    if (v.format == WeightFormat::kInt4 &&
        (v.group_size < 32 || K % v.group_size != 0 || kChunkColumns % v.group_size != 0)) {
      std::fprintf(stderr, "MatMul: a 4-bit matrix of %lld columns in groups of %d\n", static_cast<long long>(K),
                   v.group_size);
      std::abort();
    }
  }
  // Formats that pack x alike run in one pass; a call that mixes them runs one view at a time.
  auto even_odd = [](WeightFormat f) { return f == WeightFormat::kBF16 || f == WeightFormat::kInt4; };
  bool mixed = false;
  for (const MatrixView& v : weights) mixed = mixed || even_odd(v.format) != even_odd(weights[0].format);
  if (!mixed) return HWY_DYNAMIC_DISPATCH(MatMulImpl)(x, M, K, ldx, weights.data(), weights.size(), out, ldo);
  for (const MatrixView& v : weights) {
    HWY_DYNAMIC_DISPATCH(MatMulImpl)(x, M, K, ldx, &v, 1, out, ldo);
    out += v.rows;
  }
}

}  // namespace gemma
#endif
