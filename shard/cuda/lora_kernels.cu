// The LoRA shrink and expand kernels (lora_kernels.h). They run once per projection and layer on a few tokens, so
// each is latency-bound: a launch reads a few MB at most and must end in microseconds. The design therefore keeps
// every thread's work short, its loads wide (16 bytes where the alignment allows, a scalar fallback elsewhere) and
// independent (issued together, before the values are used), and reads each weight once per chunk of tokens.
//  - Shrink: block (chunk, group of 16 rows of A, split of the input). The block stages the chunk's x for 512 input
//    columns at a time in shared memory as f32 (x is read once per block, not once per row of A), while each warp
//    already holds its two rows of A for those columns in registers (loaded one tile ahead). Lane l takes columns
//    4l .. 4l+3 of each 128, so A and x are read in consecutive 512-byte runs; a warp then adds its lanes' sums of
//    the 8 tokens in 9 shuffles (halving the values at each step) rather than 8 separate reductions.
//  - Expand: block (chunk, 256 output columns); thread takes 4 consecutive columns, loads B^T for 8 rows j at once
//    (the next 8 while it uses these), and the old values of the token rows it adds to are read before the barrier.
// f32 accumulation, fixed summation order, no atomics: a row's result does not depend on what else the step holds
// (the other tokens of its chunk only share the loads), nor on the run.
#include <cuda_bf16.h>

#include <cstdint>

#include "shard/cuda/lora_kernels.h"

namespace gemma::cuda {
namespace {

constexpr int kShrinkWarps = 8;
constexpr int kShrinkRowsPerWarp = 2;
constexpr int kShrinkRows = kShrinkWarps * kShrinkRowsPerWarp;  // rows of A per shrink block
constexpr int kShrinkTile = 512;                                // input columns staged at once (16 KB of x)
constexpr int kShrinkQuads = kShrinkTile / 128;                 // float4s of A per lane, row and tile
constexpr int64_t kSplitMinInputs = kShrinkTile;                // a split is about one tile, so blocks are short
constexpr int64_t kSplitAlign = 128;                            // split starts: a warp's float4 step (16-byte aligned)
constexpr int kExpandThreads = 64;
constexpr int kExpandCols = 4;                                  // output columns per expand thread (one float4)
constexpr int kExpandRowsAtOnce = 8;                            // rows of B^T whose loads are in flight together

static_assert(kLoraChunkTokens == 8, "the shrink's warp reduction halves 8 token sums over lane bits 4, 3, 2");
static_assert(kLoraMaxRank % kShrinkRows == 0, "");

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Columns col .. col+3 of row p, those at or past `end` as 0. vec: p + col is 16-byte aligned whenever col < end, and
// col < end implies col + 3 < end (the caller checks the row base, the row length and the column steps).
__device__ __forceinline__ float4 LoadQuad(const float* p, int64_t col, int64_t end, bool vec) {
  float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (vec) {
    if (col < end) v = __ldg(reinterpret_cast<const float4*>(p + col));
  } else {
    if (col < end) v.x = __ldg(p + col);
    if (col + 1 < end) v.y = __ldg(p + col + 1);
    if (col + 2 < end) v.z = __ldg(p + col + 2);
    if (col + 3 < end) v.w = __ldg(p + col + 3);
  }
  return v;
}

// 16 bytes of x (8 bf16 or 4 f32) as f32.
__device__ __forceinline__ void Widen(uint4 raw, const __nv_bfloat16*, float* dst) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const float2 f = __bfloat1622float2(h[q]);
    dst[2 * q] = f.x;
    dst[2 * q + 1] = f.y;
  }
}
__device__ __forceinline__ void Widen(uint4 raw, const float*, float* dst) {
  dst[0] = __uint_as_float(raw.x);
  dst[1] = __uint_as_float(raw.y);
  dst[2] = __uint_as_float(raw.z);
  dst[3] = __uint_as_float(raw.w);
}

// Sums v[c] over the warp's 32 lanes for all 8 c at once: at the step over lane bit b the lanes with that bit keep
// the upper half of their values and send the lower half (the others the reverse), so 4 + 2 + 1 shuffles leave one
// value per lane and 2 more finish it. Lane l ends with the sum of c = (l >> 2) & 7. Every sum is a fixed tree over
// the lanes' values of that c only.
__device__ __forceinline__ float WarpSum8(float (&v)[8], int lane) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const bool hi = (lane & 16) != 0;
    const float send = hi ? v[k] : v[k + 4], keep = hi ? v[k + 4] : v[k];
    v[k] = keep + __shfl_xor_sync(0xffffffffu, send, 16);
  }
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    const bool hi = (lane & 8) != 0;
    const float send = hi ? v[k] : v[k + 2], keep = hi ? v[k + 2] : v[k];
    v[k] = keep + __shfl_xor_sync(0xffffffffu, send, 8);
  }
  {
    const bool hi = (lane & 4) != 0;
    const float send = hi ? v[0] : v[1], keep = hi ? v[1] : v[0];
    v[0] = keep + __shfl_xor_sync(0xffffffffu, send, 4);
  }
  v[0] += __shfl_xor_sync(0xffffffffu, v[0], 2);
  v[0] += __shfl_xor_sync(0xffffffffu, v[0], 1);
  return v[0];
}

// One warp's rows of A over one tile [t0, t0 + kShrinkTile) of its split: lane l's float4s k hold columns
// t0 + 128k + 4l .. +3. Rows past the rank and columns past `end` read as 0 (nothing is loaded for them).
__device__ __forceinline__ void LoadATile(float4 (&a)[kShrinkRowsPerWarp][kShrinkQuads], const float* const (&row)[2],
                                          const bool (&valid)[2], int64_t t0, int64_t end, int lane, bool vec) {
#pragma unroll
  for (int r = 0; r < kShrinkRowsPerWarp; ++r) {
#pragma unroll
    for (int k = 0; k < kShrinkQuads; ++k) {
      a[r][k] = valid[r] ? LoadQuad(row[r], t0 + 128 * k + 4 * lane, end, vec) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  }
}

// Block (chunk, row group, split): see the top of the file. Warp w takes rows j = blockIdx.y * 16 + w and j + 8 of A
// and the input columns [blockIdx.z * split_len, +split_len), one 512-column tile at a time. Every warp helps stage
// x and meets every barrier, also when its rows are past the adapter's rank.
template <typename In>
__global__ void __launch_bounds__(kShrinkWarps * 32)
    LoraShrink(const In* x, int64_t ldx, int64_t in, int64_t split_len, LoraStepLayout layout,
               const LoraDeviceEntry* entries, int64_t slot_stride, float* partial, int64_t split_stride) {
  const int chunk = blockIdx.x;
  if (chunk >= *layout.num_chunks) return;  // the whole block alike, before any barrier
  const LoraDeviceEntry e = entries[layout.chunk_slot[chunk] * slot_stride];
  const int row0 = blockIdx.y * kShrinkRows;
  if (row0 >= e.rank) return;  // also rank 0: this adapter does not adapt the projection
  const int first = layout.chunk_first[chunk], count = layout.chunk_count[chunk];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t begin = blockIdx.z * split_len, end = min(in, begin + split_len);  // end <= begin: an empty split

  // 16-byte loads of A when every row starts 16-byte aligned (split_len and the tiles step in multiples of 4).
  const bool vec_a = in % 4 == 0 && Aligned16(e.a);
  int j[kShrinkRowsPerWarp];
  bool valid[kShrinkRowsPerWarp];
  const float* row[kShrinkRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kShrinkRowsPerWarp; ++r) {
    j[r] = row0 + warp + r * kShrinkWarps;
    valid[r] = j[r] < e.rank;
    row[r] = e.a + static_cast<int64_t>(valid[r] ? j[r] : 0) * in;
  }

  __shared__ __align__(16) float xs[kLoraChunkTokens][kShrinkTile];
  float acc[kShrinkRowsPerWarp][kLoraChunkTokens] = {};
  float4 a_cur[kShrinkRowsPerWarp][kShrinkQuads];
  LoadATile(a_cur, row, valid, begin, end, lane, vec_a);
  for (int64_t t0 = begin; t0 < end; t0 += kShrinkTile) {
    // The next tile's A goes out now and lands while this one is staged and summed.
    float4 a_next[kShrinkRowsPerWarp][kShrinkQuads];
    LoadATile(a_next, row, valid, t0 + kShrinkTile, end, lane, vec_a);

    // Stage x[tokens][t0, t0 + kShrinkTile) as f32, 16 bytes per load where the row allows it; columns past `end`
    // become 0 (A is 0 there too, and uninitialized shared memory could hold a NaN).
    constexpr int kVec = 16 / sizeof(In);
    constexpr int kGroups = kShrinkTile / kVec;  // per token
    constexpr int kPerThread = kLoraChunkTokens * kGroups / (kShrinkWarps * 32);
#pragma unroll
    for (int m = 0; m < kPerThread; ++m) {
      const int idx = threadIdx.x + m * kShrinkWarps * 32, c = idx / kGroups, g = idx % kGroups;
      if (c >= count) continue;
      const int64_t col = t0 + static_cast<int64_t>(g) * kVec;
      const In* p = x + static_cast<int64_t>(layout.tokens[first + c]) * ldx + col;
      float v[kVec];
      if (col + kVec <= end && Aligned16(p)) {
        Widen(*reinterpret_cast<const uint4*>(p), p, v);
      } else {
#pragma unroll
        for (int q = 0; q < kVec; ++q) v[q] = col + q < end ? ToFloat(p[q]) : 0.0f;
      }
#pragma unroll
      for (int q = 0; q < kVec; q += 4) {
        *reinterpret_cast<float4*>(&xs[c][g * kVec + q]) = make_float4(v[q], v[q + 1], v[q + 2], v[q + 3]);
      }
    }
    __syncthreads();

#pragma unroll
    for (int k = 0; k < kShrinkQuads; ++k) {
#pragma unroll
      for (int c = 0; c < kLoraChunkTokens; ++c) {
        if (c >= count) continue;  // the chunk's tokens past `count` are neither staged nor summed
        const float4 xv = *reinterpret_cast<const float4*>(&xs[c][128 * k + 4 * lane]);
#pragma unroll
        for (int r = 0; r < kShrinkRowsPerWarp; ++r) {
          const float4 av = a_cur[r][k];
          acc[r][c] += av.x * xv.x;
          acc[r][c] += av.y * xv.y;
          acc[r][c] += av.z * xv.z;
          acc[r][c] += av.w * xv.w;
        }
      }
    }
    __syncthreads();  // before the next tile overwrites xs
#pragma unroll
    for (int r = 0; r < kShrinkRowsPerWarp; ++r) {
#pragma unroll
      for (int k = 0; k < kShrinkQuads; ++k) a_cur[r][k] = a_next[r][k];
    }
  }

  // An empty split (or tile) leaves its sums 0, which the expand adds like any other.
  float* out = partial + blockIdx.z * split_stride;
  const int c = (lane >> 2) & 7;
#pragma unroll
  for (int r = 0; r < kShrinkRowsPerWarp; ++r) {
    if (!valid[r]) continue;  // warp-uniform
    const float sum = WarpSum8(acc[r], lane);
    if ((lane & 3) == 0 && c < count) out[static_cast<int64_t>(first + c) * kLoraMaxRank + j[r]] = sum;
  }
}

// Block (chunk, column group): the chunk's shrunk rows (splits added in order, times scaling) go to shared memory;
// thread t then forms, for its 4 columns o, each token's sum over j of s[c][j] * B^T[j, o] and adds it to that
// token's output. B^T's loads for the first rows and the output rows' old values go out before the barrier. At most
// 168 registers (launch bounds 64 x 6) so that six blocks share an SM: 8 chunks of a 24576-wide output fit one wave.
__global__ void __launch_bounds__(kExpandThreads, 6)
    LoraExpand(const float* partial, int splits, int64_t split_stride, LoraStepLayout layout,
               const LoraDeviceEntry* entries, int64_t slot_stride, float* out, int64_t ldo, int64_t out_dim) {
  const int chunk = blockIdx.x;
  if (chunk >= *layout.num_chunks) return;  // the whole block alike, before any barrier
  const LoraDeviceEntry e = entries[layout.chunk_slot[chunk] * slot_stride];
  if (e.rank == 0) return;
  const int first = layout.chunk_first[chunk], count = layout.chunk_count[chunk];
  const int64_t o = (static_cast<int64_t>(blockIdx.y) * kExpandThreads + threadIdx.x) * kExpandCols;
  // 16-byte loads of B^T when every row starts 16-byte aligned (then o < out_dim implies o + 3 < out_dim).
  const bool vec_b = out_dim % 4 == 0 && Aligned16(e.bt);

  float4 b[kExpandRowsAtOnce];
#pragma unroll
  for (int q = 0; q < kExpandRowsAtOnce; ++q) {
    b[q] = q < e.rank ? LoadQuad(e.bt + static_cast<int64_t>(q) * out_dim, o, out_dim, vec_b)
                      : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  // The rows this thread adds to, read now (each element has this one writer, so nothing changes them meanwhile).
  float4 old[kLoraChunkTokens];
#pragma unroll
  for (int c = 0; c < kLoraChunkTokens; ++c) {
    old[c] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (c >= count || o >= out_dim) continue;
    const float* src = out + static_cast<int64_t>(layout.tokens[first + c]) * ldo + o;
    if (o + 3 < out_dim && Aligned16(src)) {
      old[c] = *reinterpret_cast<const float4*>(src);
    } else {
      old[c].x = src[0];
      if (o + 1 < out_dim) old[c].y = src[1];
      if (o + 2 < out_dim) old[c].z = src[2];
      if (o + 3 < out_dim) old[c].w = src[3];
    }
  }

  __shared__ float s[kLoraChunkTokens][kLoraMaxRank];
  for (int i = threadIdx.x; i < count * e.rank; i += kExpandThreads) {
    const int c = i / e.rank, jj = i % e.rank;
    const int64_t at = static_cast<int64_t>(first + c) * kLoraMaxRank + jj;
    float p[kLoraMaxSplits];
#pragma unroll
    for (int z = 0; z < kLoraMaxSplits; ++z) p[z] = z < splits ? partial[z * split_stride + at] : 0.0f;
    float v = 0.0f;
#pragma unroll
    for (int z = 0; z < kLoraMaxSplits; ++z) {
      if (z < splits) v += p[z];  // splits in order
    }
    s[c][jj] = v * e.scaling;
  }
  __syncthreads();
  if (o >= out_dim) return;  // after the barrier

  float4 acc[kLoraChunkTokens];
#pragma unroll
  for (int c = 0; c < kLoraChunkTokens; ++c) acc[c] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (int j0 = 0; j0 < e.rank; j0 += kExpandRowsAtOnce) {
    float4 cur[kExpandRowsAtOnce];
#pragma unroll
    for (int q = 0; q < kExpandRowsAtOnce; ++q) {
      cur[q] = b[q];
      const int jn = j0 + kExpandRowsAtOnce + q;  // the next rows' loads go out before these are used
      b[q] = jn < e.rank ? LoadQuad(e.bt + static_cast<int64_t>(jn) * out_dim, o, out_dim, vec_b)
                         : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int q = 0; q < kExpandRowsAtOnce; ++q) {
      if (j0 + q >= e.rank) break;  // j in order 0 .. rank-1 for every token
#pragma unroll
      for (int c = 0; c < kLoraChunkTokens; ++c) {
        if (c >= count) continue;
        const float sv = s[c][j0 + q];
        acc[c].x += sv * cur[q].x;
        acc[c].y += sv * cur[q].y;
        acc[c].z += sv * cur[q].z;
        acc[c].w += sv * cur[q].w;
      }
    }
  }
#pragma unroll
  for (int c = 0; c < kLoraChunkTokens; ++c) {
    if (c >= count) continue;
    const float4 v = make_float4(old[c].x + acc[c].x, old[c].y + acc[c].y, old[c].z + acc[c].z, old[c].w + acc[c].w);
    float* dst = out + static_cast<int64_t>(layout.tokens[first + c]) * ldo + o;  // as read above
    if (o + 3 < out_dim && Aligned16(dst)) {
      *reinterpret_cast<float4*>(dst) = v;
    } else {
      dst[0] = v.x;  // o < out_dim here
      if (o + 1 < out_dim) dst[1] = v.y;
      if (o + 2 < out_dim) dst[2] = v.z;
      if (o + 3 < out_dim) dst[3] = v.w;
    }
  }
}

}  // namespace

// About one 512-column tile per split: enough blocks to spread the reads of A, a short loop in each.
int LoraSplits(int64_t in) {
  const int64_t splits = (in + kSplitMinInputs - 1) / kSplitMinInputs;
  return static_cast<int>(splits < 1 ? 1 : (splits > kLoraMaxSplits ? kLoraMaxSplits : splits));
}

cudaError_t LaunchLoraShrink(const void* x, int64_t ldx, int64_t in, Dtype x_type, const LoraStepLayout& layout,
                             const LoraDeviceEntry* entries, int64_t slot_stride, int max_chunks, int max_rank,
                             float* partial, int64_t split_stride, cudaStream_t stream) {
  if (max_chunks <= 0) return cudaSuccess;
  if (max_rank < 1 || max_rank > kLoraMaxRank || in < 1) return cudaErrorInvalidValue;
  const int splits = LoraSplits(in);
  // A multiple of 128: every split and tile starts at a lane step, 16-byte aligned in A's rows when in % 4 == 0.
  // Rounding up can leave the last splits short or empty; an empty one writes zeros.
  const int64_t split_len = ((in + splits - 1) / splits + kSplitAlign - 1) / kSplitAlign * kSplitAlign;
  const dim3 grid(max_chunks, (max_rank + kShrinkRows - 1) / kShrinkRows, splits);
  if (x_type == Dtype::kF32) {
    LoraShrink<<<grid, kShrinkWarps * 32, 0, stream>>>(static_cast<const float*>(x), ldx, in, split_len, layout,
                                                       entries, slot_stride, partial, split_stride);
  } else {
    LoraShrink<<<grid, kShrinkWarps * 32, 0, stream>>>(static_cast<const __nv_bfloat16*>(x), ldx, in, split_len,
                                                       layout, entries, slot_stride, partial, split_stride);
  }
  return cudaGetLastError();
}

cudaError_t LaunchLoraExpand(const float* partial, int splits, int64_t split_stride, const LoraStepLayout& layout,
                             const LoraDeviceEntry* entries, int64_t slot_stride, int max_chunks, float* out,
                             int64_t ldo, int64_t out_dim, cudaStream_t stream) {
  if (max_chunks <= 0) return cudaSuccess;
  if (splits < 1 || splits > kLoraMaxSplits || out_dim < 1) return cudaErrorInvalidValue;
  constexpr int64_t kBlockCols = int64_t{kExpandThreads} * kExpandCols;
  const dim3 grid(max_chunks, static_cast<unsigned>((out_dim + kBlockCols - 1) / kBlockCols));
  LoraExpand<<<grid, kExpandThreads, 0, stream>>>(partial, splits, split_stride, layout, entries, slot_stride, out, ldo,
                                                  out_dim);
  return cudaGetLastError();
}

}  // namespace gemma::cuda
