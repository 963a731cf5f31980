// The CUDA backend's kernels, header-only templates over the element types of GEMM inputs (Out) and of the KV
// cache (Kv): float or __nv_bfloat16. The residual stream and every reduction stay in float.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <cstdint>

#include "shard/cuda/device_values.cuh"
#include "shard/cuda/launch.cuh"

namespace gemma::cuda::kernels {

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float BlockSum(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = WarpSum(v);
  __syncthreads();  // `partial` may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float total = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += partial[w];
  return total;
}

// Gemma 2's tanh soft-capping of attention scores and logits: cap * tanh(s / cap); cap 0: none.
__device__ __forceinline__ float SoftCap(float s, float cap) { return cap > 0.0f ? cap * tanhf(s / cap) : s; }

// The first key a query at `pos` sees: 0, or with a sliding window (Gemma 2/3's local layers) pos - window + 1.
__device__ __forceinline__ int FirstKey(int pos, int window) { return window > 0 ? max(0, pos - window + 1) : 0; }

__global__ void Embed(const uint16_t* embed, int64_t rows, int64_t hidden, const int32_t* tokens, int64_t vocab_begin,
                      float scale, float* x) {
  AfterPrevious();
  const int t = blockIdx.x;
  const int64_t local = static_cast<int64_t>(tokens[t]) - vocab_begin;
  float* out = x + t * hidden;
  const bool mine = local >= 0 && local < rows;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    out[i] = mine ? Bf16BitsToFloat(embed[local * hidden + i]) * scale : 0.0f;
  }
}

template <typename Out>
__device__ void NormRow(const float* x, int64_t hidden, const float* w1p, float eps, Out* out) {
  float ss = 0;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) ss += x[i] * x[i];
  ss = BlockSum(ss);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(hidden) + eps);
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) Store(&out[i], x[i] * inv * w1p[i]);
}

template <typename Out>
__global__ void RmsNorm(const float* x, const int32_t* rows, int64_t hidden, const float* w1p, float eps, Out* out) {
  AfterPrevious();
  const int r = blockIdx.x;
  const int64_t src = rows != nullptr ? rows[r] : r;
  NormRow(x + src * hidden, hidden, w1p, eps, out + static_cast<int64_t>(r) * hidden);
}

template <typename Out>
__global__ void AddRmsNorm(float* x, const float* delta, int64_t hidden, const float* w1p, float eps, Out* out) {
  AfterPrevious();
  const int64_t t = blockIdx.x;
  float* row = x + t * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) row[i] += delta[t * hidden + i];
  __syncthreads();
  NormRow(row, hidden, w1p, eps, out + t * hidden);
}

__global__ void SoftCapInPlace(float* x, int64_t n, float cap) {
  AfterPrevious();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] = SoftCap(x[i], cap);
  }
}

__global__ void Add(float* x, const float* delta, int64_t n) {
  AfterPrevious();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] += delta[i];
  }
}

// One block per (token, q or k head): a whole grid, not one block per token, so that a decode step's rotation
// is not one block's sequential work. With Gemma 3's QK-norm (q_norm, k_norm: 1 + w, [head_dim]) each head is
// RMS-normalized first.
template <typename Kv>
__global__ void RopeAndCacheWrite(float* qkv, int64_t ld, int num_q, int num_kv, int head_dim, const float* cos_sin,
                                  const int32_t* positions, const int64_t* cache_row, int64_t head_stride,
                                  Kv* k_cache, Kv* v_cache, float q_scale, const float* q_norm, const float* k_norm,
                                  float eps) {
  AfterPrevious();
  const int t = blockIdx.x, h = blockIdx.y;  // k heads follow the q heads in the row
  const int half = head_dim / 2;
  const float* cs = cos_sin + static_cast<int64_t>(positions[t]) * head_dim;
  float* row = qkv + t * ld;
  float* head = row + static_cast<int64_t>(h) * head_dim;
  const float* norm = h < num_q ? q_norm : k_norm;  // the same for the whole block
  float inv = 1.0f;
  if (norm != nullptr) {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) ss += head[i] * head[i];
    ss = BlockSum(ss);  // every read above happens before the writes below
    inv = 1.0f / sqrtf(ss / static_cast<float>(head_dim) + eps);
  }
  // Rotate pairs (i, i + half); q is then scaled.
  const float scale = h < num_q ? q_scale : 1.0f;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float c = cs[2 * i], s = cs[2 * i + 1];
    float x0 = head[i], x1 = head[i + half];
    if (norm != nullptr) {
      x0 = x0 * inv * norm[i];
      x1 = x1 * inv * norm[i + half];
    }
    head[i] = (x0 * c - x1 * s) * scale;
    head[i + half] = (x0 * s + x1 * c) * scale;
  }
  if (h < num_q) return;
  __syncthreads();
  const int kv = h - num_q;
  const float* v = row + static_cast<int64_t>(num_q + num_kv + kv) * head_dim;
  const int64_t at = cache_row[t] + kv * head_stride;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    Store(&k_cache[at + d], head[d]);
    Store(&v_cache[at + d], v[d]);
  }
}

template <typename Out>
__global__ void GeluMul(const float* gate_up, int64_t I, int64_t n, Out* out) {
  AfterPrevious();
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / I, i = e % I;
    const float g = gate_up[t * 2 * I + i], u = gate_up[t * 2 * I + I + i];
    const float gelu = 0.5f * g * (1.0f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g)));
    Store(&out[e], gelu * u);
  }
}

constexpr int kAttentionWarps = 4;
constexpr int kMaxHeadDim = 256;
constexpr int kDimsPerLane = kMaxHeadDim / 32;

// A block's end of decode attention: merges its warps' online softmaxes (max m, sum l, accumulator acc over the
// lane's dimensions, dim(k)) and writes the output, or with several splits this split's partial for CombineSplits.
template <typename Out, bool kVectorized>
__device__ void FinishAttention(float m, float l, const float (&acc)[kDimsPerLane], int head_dim, int t, int h,
                                int split, int splits, int num_q, Out* out, float* partials) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  auto dim = [lane](int k) { return kVectorized ? lane * kDimsPerLane + k : lane + 32 * k; };
  __shared__ float warp_m[kAttentionWarps], warp_l[kAttentionWarps];
  __shared__ float warp_acc[kAttentionWarps][kMaxHeadDim];
  if (lane == 0) {
    warp_m[warp] = m;
    warp_l[warp] = l;
  }
#pragma unroll
  for (int k = 0; k < kDimsPerLane; ++k) {
    const int d = dim(k);
    if (d < head_dim) warp_acc[warp][d] = acc[k];
  }
  __syncthreads();
  float m_all = -FLT_MAX;
  for (int w = 0; w < kAttentionWarps; ++w) m_all = fmaxf(m_all, warp_m[w]);
  float l_all = 0.0f;
  for (int w = 0; w < kAttentionWarps; ++w) l_all += warp_l[w] * expf(warp_m[w] - m_all);
  if (splits == 1) {
    Out* o = out + (static_cast<int64_t>(t) * num_q + h) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
      float v = 0.0f;
      for (int w = 0; w < kAttentionWarps; ++w) v += warp_acc[w][d] * expf(warp_m[w] - m_all);
      Store(&o[d], v / l_all);
    }
    return;
  }
  // This split's partial: [max, sum, unnormalized accumulator], relative to its own max.
  float* part = partials + ((static_cast<int64_t>(blockIdx.x) * num_q + h) * splits + split) * (head_dim + 2);
  if (threadIdx.x == 0) {
    part[0] = m_all;
    part[1] = l_all;
  }
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float v = 0.0f;
    for (int w = 0; w < kAttentionWarps; ++w) v += warp_acc[w][d] * expf(warp_m[w] - m_all);
    part[2 + d] = v;
  }
}

// Decode (flash-decoding): blocks per (token, q head, split of the context), for tokens alone in their sequence's
// step. The context is dealt out to every warp of every split in turn (position j to warp j mod (splits * warps)),
// each keeping an online softmax; a block merges its warps, and with one split writes the output, otherwise its
// partial (max, sum, accumulator) for CombineSplits. The split count depends on the batch, not on the context, so
// a captured decode graph stays valid as sequences grow.
template <typename Kv, typename Out, int kHeadDim>
__global__ void __launch_bounds__(kAttentionWarps * 32)
    PagedAttention(const int32_t* token_list, const float* qkv, int64_t ld, int head_dim_arg, const int32_t* positions,
                   const int32_t* seq_of_token, const int32_t* block_tables, int max_blocks, const Kv* k_cache,
                   const Kv* v_cache, int block_size, int64_t block_stride, int64_t head_stride, int heads_per_kv,
                   int q_head_begin, int kv_head_begin, int num_q, Out* out, float* partials, int window,
                   float softcap) {
  AfterPrevious();
  const int head_dim = kHeadDim > 0 ? kHeadDim : head_dim_arg;  // a constant where Gemma's own size is dispatched
  const int t = token_list[blockIdx.x], h = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int kv_head = (q_head_begin + h) / heads_per_kv - kv_head_begin;
  const float* q = qkv + t * ld + static_cast<int64_t>(h) * head_dim;
  // Gemma's bf16 cache: each lane holds 8 consecutive dimensions, read as one 16-byte load per row; otherwise a
  // lane holds every 32nd dimension.
  constexpr bool kVectorized = kHeadDim == kMaxHeadDim && sizeof(Kv) == 2;
  auto dim = [lane](int k) { return kVectorized ? lane * kDimsPerLane + k : lane + 32 * k; };
  float qreg[kDimsPerLane], acc[kDimsPerLane];
#pragma unroll
  for (int k = 0; k < kDimsPerLane; ++k) {
    const int d = dim(k);
    qreg[k] = d < head_dim ? q[d] : 0.0f;
    acc[k] = 0.0f;
  }
  const int32_t* blocks = block_tables + static_cast<int64_t>(seq_of_token[t]) * max_blocks;
  const int n = positions[t] + 1, lo = FirstKey(positions[t], window);
  float m = -FLT_MAX, l = 0.0f;
  // The K and V rows of kAhead positions are loaded before the first is used: a short context gives each warp only
  // a few positions, and one at a time would leave it waiting on memory latency. Same order as one at a time.
  constexpr int kAhead = 4;
  const int stride = splits * kAttentionWarps;
  for (int j0 = lo + split * kAttentionWarps + warp; j0 < n; j0 += kAhead * stride) {
    float kf[kAhead][kDimsPerLane], vf[kAhead][kDimsPerLane];
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
      const int j = j0 + u * stride;
      if (j >= n) break;
      const int64_t base = static_cast<int64_t>(blocks[j / block_size]) * block_stride + kv_head * head_stride +
                           static_cast<int64_t>(j % block_size) * head_dim;
      if constexpr (kVectorized) {
        Unpack(*reinterpret_cast<const uint4*>(k_cache + base + lane * kDimsPerLane), kf[u], __nv_bfloat16());
        Unpack(*reinterpret_cast<const uint4*>(v_cache + base + lane * kDimsPerLane), vf[u], __nv_bfloat16());
      } else {
#pragma unroll
        for (int k = 0; k < kDimsPerLane; ++k) {
          const int d = dim(k);
          kf[u][k] = d < head_dim ? Load(&k_cache[base + d]) : 0.0f;
          vf[u][k] = d < head_dim ? Load(&v_cache[base + d]) : 0.0f;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
      if (j0 + u * stride >= n) break;
      float partial = 0.0f;
#pragma unroll
      for (int k = 0; k < kDimsPerLane; ++k) partial += qreg[k] * kf[u][k];
      const float s = SoftCap(WarpSum(partial), softcap);
      const float m_new = fmaxf(m, s);
      const float correction = expf(m - m_new), p = expf(s - m_new);
      l = l * correction + p;
#pragma unroll
      for (int k = 0; k < kDimsPerLane; ++k) acc[k] = acc[k] * correction + p * vf[u][k];
      m = m_new;
    }
  }
  FinishAttention<Out, kVectorized>(m, l, acc, head_dim, t, h, split, splits, num_q, out, partials);
}

__device__ __forceinline__ void CpAsync16(void* shared, const void* global) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(address), "l"(global) : "memory");
#endif
}
__device__ __forceinline__ void CpAsyncCommit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

// PagedAttention for Gemma's bf16 cache (head size 256), with each warp's next kStreamDepth positions' K and V rows
// in flight as asynchronous copies into shared memory rather than in registers: more bytes in flight per
// multiprocessor, which is what a decode batch's attention (reading every sequence's cache) is bound by. The same
// positions in the same order and the same arithmetic as PagedAttention, so the same results.
constexpr int kStreamDepth = 8;
template <typename Out>
__global__ void __launch_bounds__(kAttentionWarps * 32)
    StreamedAttention(const int32_t* token_list, const float* qkv, int64_t ld, const int32_t* positions,
                      const int32_t* seq_of_token, const int32_t* block_tables, int max_blocks,
                      const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache, int block_size, int64_t block_stride,
                      int64_t head_stride, int heads_per_kv, int q_head_begin, int kv_head_begin, int num_q, Out* out,
                      float* partials, int window, float softcap) {
  AfterPrevious();
  constexpr int kHeadDim = kMaxHeadDim;
  __shared__ __align__(16) uint4 ring[kAttentionWarps][kStreamDepth][2][32];
  const int t = token_list[blockIdx.x], h = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int kv_head = (q_head_begin + h) / heads_per_kv - kv_head_begin;
  const float* q = qkv + t * ld + static_cast<int64_t>(h) * kHeadDim;
  float qreg[kDimsPerLane], acc[kDimsPerLane];
#pragma unroll
  for (int k = 0; k < kDimsPerLane; ++k) {
    qreg[k] = q[lane * kDimsPerLane + k];
    acc[k] = 0.0f;
  }
  const int32_t* blocks = block_tables + static_cast<int64_t>(seq_of_token[t]) * max_blocks;
  const int n = positions[t] + 1;
  const int stride = splits * kAttentionWarps, first = FirstKey(positions[t], window) + split * kAttentionWarps + warp;
  const int count = first < n ? (n - first + stride - 1) / stride : 0;
  // The i-th position of this warp into slot i mod kStreamDepth; one commit group per position (empty past the
  // end), so that waiting for all but the newest kStreamDepth - 1 groups means position i has landed. Each lane
  // reads back only the 16 bytes it copied itself.
  auto issue = [&](int i) {
    if (i < count) {
      const int j = first + i * stride;
      const int64_t base = static_cast<int64_t>(blocks[j / block_size]) * block_stride + kv_head * head_stride +
                           static_cast<int64_t>(j % block_size) * kHeadDim + lane * kDimsPerLane;
      CpAsync16(&ring[warp][i % kStreamDepth][0][lane], k_cache + base);
      CpAsync16(&ring[warp][i % kStreamDepth][1][lane], v_cache + base);
    }
    CpAsyncCommit();
  };
#pragma unroll
  for (int i = 0; i < kStreamDepth; ++i) issue(i);
  float m = -FLT_MAX, l = 0.0f;
  for (int i = 0; i < count; ++i) {
    CpAsyncWait<kStreamDepth - 1>();
    float kf[kDimsPerLane], vf[kDimsPerLane];
    Unpack(ring[warp][i % kStreamDepth][0][lane], kf, __nv_bfloat16());
    Unpack(ring[warp][i % kStreamDepth][1][lane], vf, __nv_bfloat16());
    float partial = 0.0f;
#pragma unroll
    for (int k = 0; k < kDimsPerLane; ++k) partial += qreg[k] * kf[k];
    const float s = SoftCap(WarpSum(partial), softcap);
    const float m_new = fmaxf(m, s);
    const float correction = expf(m - m_new), p = expf(s - m_new);
    l = l * correction + p;
#pragma unroll
    for (int k = 0; k < kDimsPerLane; ++k) acc[k] = acc[k] * correction + p * vf[k];
    m = m_new;
    // The slot's values are in registers and used above: it may be refilled.
    issue(i + kStreamDepth);
  }
  CpAsyncWait<0>();
  FinishAttention<Out, true>(m, l, acc, kHeadDim, t, h, split, splits, num_q, out, partials);
}

// Merges the splits of PagedAttention: one block per (listed token, q head).
template <typename Out>
__global__ void CombineSplits(const int32_t* token_list, const float* partials, int splits, int head_dim, int num_q,
                              Out* out) {
  AfterPrevious();
  const int t = token_list[blockIdx.x], h = blockIdx.y;
  const float* part = partials + (static_cast<int64_t>(blockIdx.x) * num_q + h) * splits * (head_dim + 2);
  float m = -FLT_MAX;
  for (int s = 0; s < splits; ++s) m = fmaxf(m, part[s * (head_dim + 2)]);
  float l = 0.0f;
  for (int s = 0; s < splits; ++s) l += part[s * (head_dim + 2) + 1] * expf(part[s * (head_dim + 2)] - m);
  Out* o = out + (static_cast<int64_t>(t) * num_q + h) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) v += part[s * (head_dim + 2) + 2 + d] * expf(part[s * (head_dim + 2)] - m);
    Store(&o[d], v / l);
  }
}

constexpr int kTileQueries = 32;           // consecutive tokens of one sequence per block
constexpr int kTileKeys = 16;              // cached positions staged in shared memory at a time
constexpr int kPartsPerQuery = 4;          // threads sharing one query, each with head_dim / 4 dimensions
constexpr int kMaxDimsPerPart = kMaxHeadDim / kPartsPerQuery;
constexpr int kTileRow = kMaxHeadDim + kPartsPerQuery;  // one pad word per part: the 4 parts hit different banks

// Prefill: one block per (tile of up to kTileQueries consecutive tokens of one sequence, q head), FlashAttention
// style: K and V rows are staged through shared memory kTileKeys at a time and reused by every query of the tile,
// with an online softmax per query. Needs head_dim % kPartsPerQuery == 0.
template <typename Kv, typename Out, int kHeadDim>
__global__ void __launch_bounds__(kTileQueries * kPartsPerQuery)
    TiledAttention(const int32_t* tile_first, const int32_t* tile_count, const float* qkv, int64_t ld, int head_dim_arg,
                   const int32_t* positions, const int32_t* seq_of_token, const int32_t* block_tables, int max_blocks,
                   const Kv* k_cache, const Kv* v_cache, int block_size, int64_t block_stride, int64_t head_stride,
                   int heads_per_kv, int q_head_begin, int kv_head_begin, int num_q, Out* out, int window,
                   float softcap) {
  __shared__ float ks[kTileKeys][kTileRow];
  __shared__ float vs[kTileKeys][kTileRow];
  const int head_dim = kHeadDim > 0 ? kHeadDim : head_dim_arg;
  const int h = blockIdx.y;
  const int t0 = tile_first[blockIdx.x], n = tile_count[blockIdx.x];
  const int query = threadIdx.x / kPartsPerQuery, part = threadIdx.x % kPartsPerQuery;
  const int dp = head_dim / kPartsPerQuery;
  const bool active = query < n;
  const int t = t0 + (active ? query : 0);
  const int my_pos = positions[t], my_first = FirstKey(my_pos, window);
  const int last_pos = positions[t0 + n - 1];  // the tile's tokens are consecutive positions
  const int kv_head = (q_head_begin + h) / heads_per_kv - kv_head_begin;
  const int32_t* blocks = block_tables + static_cast<int64_t>(seq_of_token[t0]) * max_blocks;
  const float* q = qkv + t * ld + static_cast<int64_t>(h) * head_dim + part * dp;
  float qreg[kMaxDimsPerPart], acc[kMaxDimsPerPart];
#pragma unroll
  for (int k = 0; k < kMaxDimsPerPart; ++k) {
    qreg[k] = k < dp ? q[k] : 0.0f;
    acc[k] = 0.0f;
  }
  float m = -FLT_MAX, l = 0.0f;
  for (int j0 = FirstKey(positions[t0], window); j0 <= last_pos; j0 += kTileKeys) {
    for (int e = threadIdx.x; e < kTileKeys * head_dim; e += blockDim.x) {
      const int r = e / head_dim, d = e % head_dim, j = j0 + r;
      float kv_k = 0.0f, kv_v = 0.0f;
      if (j <= last_pos) {
        const int64_t base = static_cast<int64_t>(blocks[j / block_size]) * block_stride + kv_head * head_stride +
                             static_cast<int64_t>(j % block_size) * head_dim;
        kv_k = Load(&k_cache[base + d]);
        kv_v = Load(&v_cache[base + d]);
      }
      ks[r][d + d / dp] = kv_k;
      vs[r][d + d / dp] = kv_v;
    }
    __syncthreads();
    const int row0 = part * (dp + 1);
    for (int r = 0; r < kTileKeys; ++r) {
      float partial = 0.0f;
#pragma unroll
      for (int k = 0; k < kMaxDimsPerPart; ++k) {
        if (k < dp) partial += qreg[k] * ks[r][row0 + k];
      }
      // The parts of one query are adjacent lanes of one warp.
      partial += __shfl_xor_sync(0xffffffffu, partial, 1);
      partial += __shfl_xor_sync(0xffffffffu, partial, 2);
      partial = SoftCap(partial, softcap);
      if (active && j0 + r <= my_pos && j0 + r >= my_first) {
        const float m_new = fmaxf(m, partial);
        const float correction = expf(m - m_new), p = expf(partial - m_new);
        l = l * correction + p;
#pragma unroll
        for (int k = 0; k < kMaxDimsPerPart; ++k) {
          if (k < dp) acc[k] = acc[k] * correction + p * vs[r][row0 + k];
        }
        m = m_new;
      }
    }
    __syncthreads();
  }
  if (!active) return;
  Out* o = out + (static_cast<int64_t>(t) * num_q + h) * head_dim + part * dp;
#pragma unroll
  for (int k = 0; k < kMaxDimsPerPart; ++k) {
    if (k < dp) Store(&o[k], acc[k] / l);
  }
}

__global__ void Bf16ToF32(const uint16_t* in, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = Bf16BitsToFloat(in[i]);
  }
}

// Per-row sampling parameters for SampleRows (plain data, shared with the launcher).
struct RowSamplingParams {
  int row;            // which row of the logits
  float temperature;  // 0: greedy
  int top_k;          // 0: no limit
  float top_p;        // (0, 1]
  uint64_t seed;
  int64_t position;
  const uint32_t* allowed;  // structured output: bit t of word t / 32 set = token t may be drawn; null: any
  const float* adjusted;    // the row with the sequence's penalties applied, drawn from instead; null: the row
  int top_n;                // the n most likely tokens returned with their log-probs (0..kMaxTopLogprobs)
  int32_t* top_ids;         // [top_n]
  float* top_logprobs;      // [top_n]
};
constexpr int kMaxTopLogprobs = 20;

// One penalized draw's row (see ApplyPenalties on the host: repetition over prompt and output, presence and
// frequency over generated tokens only): `count` distinct tokens, each with how often it was generated.
struct PenaltyRowParams {
  const float* logits;  // the model's row
  float* adjusted;      // its penalized copy
  const int32_t* tokens;
  const int32_t* generated;
  int count;
  float repetition, presence, frequency;
};

// One block per penalized row: the row copied, then each listed token's logit penalized in the copy.
__global__ void PenalizeRows(const PenaltyRowParams* rows, int64_t vocab) {
  const PenaltyRowParams p = rows[blockIdx.x];
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) p.adjusted[i] = p.logits[i];
  __syncthreads();
  for (int i = threadIdx.x; i < p.count; i += blockDim.x) {
    const int32_t t = p.tokens[i];
    float l = p.adjusted[t];
    if (p.repetition != 1.0f) l = l > 0 ? l / p.repetition : l * p.repetition;
    if (p.generated[i] > 0) l -= p.presence + p.frequency * static_cast<float>(p.generated[i]);
    p.adjusted[t] = l;
  }
}

__device__ __forceinline__ uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__device__ __forceinline__ float BlockMax(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float m = -FLT_MAX;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) m = fmaxf(m, partial[w]);
  return m;
}

// One block per (query row i of a chunk, head h) of causal attention scores s (f32, head h's rows at
// h * head_stride, rows ld apart), row i at position first_pos + i attending to keys FirstKey..first_pos+i of the
// `keys` computed: p = softmax over those (scores soft-capped first), 0 for the other keys, written as Out in the
// same layout.
template <typename Out>
__global__ void __launch_bounds__(256) CausalSoftmax(const float* s, int64_t ld, int64_t head_stride, int keys,
                                                     int first_pos, int window, float softcap, Out* p) {
  const int i = blockIdx.x;
  const int64_t at = blockIdx.y * head_stride + static_cast<int64_t>(i) * ld;
  const float* x = s + at;
  Out* y = p + at;
  const int n = min(keys, first_pos + i + 1), lo = FirstKey(first_pos + i, window);
  float local_max = -FLT_MAX;
  for (int j = lo + threadIdx.x; j < n; j += blockDim.x) local_max = fmaxf(local_max, SoftCap(x[j], softcap));
  const float m = BlockMax(local_max);
  float z = 0;
  for (int j = lo + threadIdx.x; j < n; j += blockDim.x) z += expf(SoftCap(x[j], softcap) - m);
  const float inv = 1.0f / BlockSum(z);
  for (int j = threadIdx.x; j < keys; j += blockDim.x) {
    Store(&y[j], j >= lo && j < n ? expf(SoftCap(x[j], softcap) - m) * inv : 0.0f);
  }
}

// One block per (position j, kv head h) of one sequence: its cached K and V rows (paged) into out, row j holding
// the k heads and then the v heads.
template <typename Kv>
__global__ void GatherKv(const Kv* k_cache, const Kv* v_cache, const int32_t* block_table, int block_size,
                         int64_t block_stride, int64_t head_stride, int num_kv, int head_dim, Kv* out) {
  const int j = blockIdx.x, h = blockIdx.y;
  const int64_t src = static_cast<int64_t>(block_table[j / block_size]) * block_stride + h * head_stride +
                      static_cast<int64_t>(j % block_size) * head_dim;
  Kv* row = out + static_cast<int64_t>(j) * 2 * num_kv * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    row[static_cast<int64_t>(h) * head_dim + d] = k_cache[src + d];
    row[static_cast<int64_t>(num_kv + h) * head_dim + d] = v_cache[src + d];
  }
}

__global__ void F32ToBf16(const float* in, __nv_bfloat16* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __float2bfloat16_rn(in[i]);
  }
}

// One block per row: draws a token from softmax(logits / temperature) restricted to the top_k largest logits and
// then to the smallest set of largest logits whose mass reaches top_p (thresholds found by bisection on the logit
// value, no sort), with a uniform number derived from (seed, position) only; greedy (lowest id on ties) when the
// temperature is 0. logprob is the chosen token's log-softmax at temperature 1 (the model's own). With a mask
// (p.allowed), only allowed tokens are drawn: every threshold and mass is taken over them alone, while the
// log-prob stays the unmasked model's. With p.adjusted (penalties), the draw reads that row instead; log-probs
// stay the model's. With p.top_n, the n most likely tokens of the model's row follow (ties: lower id first), with
// their log-probs, as the host's TopLogProbs gives them.
__global__ void __launch_bounds__(1024) SampleRows(const float* logits, int64_t vocab, const RowSamplingParams* params, int32_t* token,
                           float* logprob) {
  const RowSamplingParams p = params[blockIdx.x];
  const float* model = logits + static_cast<int64_t>(p.row) * vocab;
  const float* x = p.adjusted != nullptr ? p.adjusted : model;  // what the draw reads
  auto allowed = [&](int64_t i) { return p.allowed == nullptr || ((p.allowed[i >> 5] >> (i & 31)) & 1u) != 0; };
  float model_max = -FLT_MAX, local_max = -FLT_MAX, local_min = FLT_MAX;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    model_max = fmaxf(model_max, model[i]);
    if (!allowed(i)) continue;
    local_max = fmaxf(local_max, x[i]);
    local_min = fminf(local_min, x[i]);
  }
  const float mm = BlockMax(model_max);
  const float m = BlockMax(local_max);  // over the allowed tokens: what the draw is relative to
  const float lo_all = -BlockMax(-local_min);
  float z = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) z += expf(model[i] - mm);
  const float lse = logf(BlockSum(z));
  __shared__ int64_t chosen;
  if (p.temperature == 0.0f) {
    if (threadIdx.x == 0) chosen = INT64_MAX;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      if (x[i] == m && allowed(i)) {
        atomicMin(reinterpret_cast<unsigned long long*>(&chosen), static_cast<unsigned long long>(i));
      }
    }
    __syncthreads();
  } else {
    const float inv_t = 1.0f / p.temperature;
    // Threshold for top-k: the largest value v with at least k logits >= v.
    float threshold = lo_all;
    if (p.top_k > 0 && p.top_k < vocab) {
      float lo = lo_all, hi = m;
      for (int iter = 0; iter < 40; ++iter) {
        const float mid = lo + (hi - lo) * 0.5f;
        float count = 0;
        for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) count += x[i] >= mid && allowed(i) ? 1.0f : 0.0f;
        if (BlockSum(count) >= p.top_k) lo = mid; else hi = mid;
      }
      threshold = lo;
    }
    auto mass_from = [&](float v) {
      float s = 0;
      for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
        s += x[i] >= v && allowed(i) ? expf((x[i] - m) * inv_t) : 0.0f;
      }
      return BlockSum(s);
    };
    if (p.top_p < 1.0f) {
      // Top-p within the top-k set: the largest v whose mass reaches top_p of the set's mass.
      const float target = p.top_p * mass_from(threshold);
      float lo = threshold, hi = m;
      for (int iter = 0; iter < 40; ++iter) {
        const float mid = lo + (hi - lo) * 0.5f;
        if (mass_from(mid) >= target) lo = mid; else hi = mid;
      }
      threshold = lo;
    }
    // Inverse CDF over the kept logits in index order: per-thread contiguous chunks, then a scan of chunk sums.
    const float kept = mass_from(threshold);
    const double u = static_cast<double>(SplitMix64(p.seed ^ (static_cast<uint64_t>(p.position) * 0xd1b54a32d192ed03ull)) >> 11) *
                     (1.0 / 9007199254740992.0);
    const float target = static_cast<float>(u) * kept;
    const int64_t chunk = (vocab + blockDim.x - 1) / blockDim.x;
    const int64_t begin = threadIdx.x * chunk, end = min(vocab, begin + chunk);
    float own = 0;
    int64_t last_kept = -1;
    for (int64_t i = begin; i < end; ++i) {
      if (x[i] >= threshold && allowed(i)) {
        own += expf((x[i] - m) * inv_t);
        last_kept = i;
      }
    }
    __shared__ float sums[1024];
    __shared__ int64_t last[1024];
    sums[threadIdx.x] = own;
    last[threadIdx.x] = last_kept;
    if (threadIdx.x == 0) chosen = -1;
    __syncthreads();
    if (threadIdx.x == 0) {  // exclusive scan of 1024 sums: cheap beside the passes above
      float run = 0;
      int64_t fallback = -1;
      for (unsigned t = 0; t < blockDim.x; ++t) {
        const float next = run + sums[t];
        if (last[t] >= 0) fallback = last[t];
        sums[t] = run;
        run = next;
      }
      last[0] = fallback;  // rounding can leave target beyond the total: the last kept token then
    }
    __syncthreads();
    const float start = sums[threadIdx.x];
    if (own > 0 && target >= start && target < start + own) {
      float cum = start;
      for (int64_t i = begin; i < end; ++i) {
        if (x[i] < threshold || !allowed(i)) continue;
        cum += expf((x[i] - m) * inv_t);
        if (target < cum) {
          chosen = i;
          break;
        }
      }
    }
    __syncthreads();
    if (threadIdx.x == 0 && chosen < 0) chosen = last[0];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    token[blockIdx.x] = static_cast<int32_t>(chosen);
    logprob[blockIdx.x] = model[chosen] - mm - lse;
  }
  // The most likely tokens, one pass each: the best of those ranked after the previous pick (lower logit, or the
  // same logit and a higher id).
  float prev_value = FLT_MAX;
  int64_t prev_id = -1;
  __shared__ unsigned long long best_key;
  for (int k = 0; k < p.top_n; ++k) {
    float best = -FLT_MAX;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float v = model[i];
      if ((v < prev_value || (v == prev_value && i > prev_id)) && v > best) best = v;
    }
    best = BlockMax(best);
    if (threadIdx.x == 0) best_key = ULLONG_MAX;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float v = model[i];
      if (v == best && (v < prev_value || i > prev_id)) atomicMin(&best_key, static_cast<unsigned long long>(i));
    }
    __syncthreads();
    prev_value = best;
    prev_id = static_cast<int64_t>(best_key);
    if (threadIdx.x == 0) {
      p.top_ids[k] = static_cast<int32_t>(prev_id);
      p.top_logprobs[k] = best - mm - lse;
    }
    __syncthreads();  // best_key is read above before the next pass resets it
  }
}

// Small batches (decode): c[m, n] = sum_k a[m, k] * w[n, k] for m < kM <= 8, one warp per output row n, reading
// w once with 16-byte loads, kUnroll of them in flight per lane (one at a time leaves a long row such as the 7B
// down projection's waiting on memory latency), and keeping kM accumulators per lane. Every output is summed in
// the same order for any kM, so a sequence's results do not depend on how many others share its step (up to 8).
// Needs K and ldw to be multiples of 16 / sizeof(T) and 16-byte aligned rows.
template <typename T, int kM>
__global__ void __launch_bounds__(256) SmallBatchGemm(const T* a, const T* w, int64_t ldw, float* c, int64_t ldc,
                                                      int N, int K) {
  constexpr int kPerLoad = 16 / sizeof(T);
  constexpr int kUnroll = 4;
  constexpr int kStride = 32 * kPerLoad;  // elements between one lane's consecutive loads
  const int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (n >= N) return AfterPrevious();
  const T* row = w + static_cast<int64_t>(n) * ldw;
  float acc[kM];
#pragma unroll
  for (int m = 0; m < kM; ++m) acc[m] = 0.0f;
  // Streamed once (evict-first), so that the activations every warp rereads stay cached.
  auto load = [&](int k0, uint4 (&wv)[kUnroll]) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int k = k0 + u * kStride;
      wv[u] = k < K ? __ldcs(reinterpret_cast<const uint4*>(row + k)) : make_uint4(0, 0, 0, 0);
    }
  };
  // The weights do not depend on the kernel before: their first loads go out before waiting for it, and each
  // round's loads before the previous round's products.
  LetNextLaunch();
  uint4 next[kUnroll];
  load(lane * kPerLoad, next);
  WaitForPrevious();
  for (int k0 = lane * kPerLoad; k0 < K; k0 += kStride * kUnroll) {
    uint4 wv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) wv[u] = next[u];
    if (k0 + kStride * kUnroll < K) load(k0 + kStride * kUnroll, next);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int k = k0 + u * kStride;
      if (k >= K) break;
      float wf[kPerLoad], af[kPerLoad];
      Unpack(wv[u], wf, T());
#pragma unroll
      for (int m = 0; m < kM; ++m) {
        Unpack(__ldg(reinterpret_cast<const uint4*>(a + static_cast<int64_t>(m) * K + k)), af, T());
#pragma unroll
        for (int e = 0; e < kPerLoad; ++e) acc[m] += af[e] * wf[e];
      }
    }
  }
#pragma unroll
  for (int m = 0; m < kM; ++m) {
    const float sum = WarpSum(acc[m]);
    if (lane == 0) c[static_cast<int64_t>(m) * ldc + n] = sum;
  }
}

}  // namespace gemma::cuda::kernels
