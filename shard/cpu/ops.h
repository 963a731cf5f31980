// Element-wise and attention kernels of the CPU backend (SIMD, runtime dispatch). Thread-safe; single-threaded each.
#pragma once

#include <cstdint>

#include "shard/runtime/kv_cache.h"

namespace gemma {

// out[i] = x[i] * rsqrt(mean(x^2) + eps) * w1p[i], where w1p = 1 + weight.
void RmsNorm(const float* x, const float* w1p, float eps, float* out, int64_t n);

// out[i] = gelu_tanh(gate[i]) * up[i].
void GeluTanhMul(const float* gate, const float* up, float* out, int64_t n);

// x[i] = cap * tanh(x[i] / cap): Gemma 2's soft-capping of logits.
void SoftCap(float cap, float* x, int64_t n);

// sum_i a[i] * b[i], in the same order for any caller (batch-invariant).
float DotF32(const float* a, const float* b, int64_t n);

// y[i] += x[i].
void AddInPlace(const float* x, float* y, int64_t n);

// Where one sequence's K and V rows live in the paged cache: row j of a kv head is at element
// blocks.Block(j / block_size) * block_stride + head_offset + (j % block_size) * head_dim of k / v (KvRows).
struct PagedKv {
  KvRows k;
  KvRows v;
  KvTableView blocks;  // the layer's blocks of this sequence
  int block_size;
  int64_t block_stride;
  int64_t head_offset;
};

// Keys per attention segment: a row's keys are cut into segments of this many from its first key, each computed
// on its own (possibly on another thread) and combined in order (CombineSegments).
inline constexpr int kAttentionSegment = 256;

// Attention of the `heads` query heads that share one kv head (grouped-query attention; already RoPE'd and
// scaled, head h at q + h * head_dim) over one segment of key positions, [first, end): one pass over the keys
// serves every head. Unnormalized, so segments of one row can run on different threads and be combined: for head
// h, max[h] = the largest capped score cap(q_h . k_j), where cap(s) = softcap * tanh(s / softcap) (softcap 0:
// none); sum[h] = sum_j exp(s_j - max[h]); out[h * head_dim ..] = sum_j exp(s_j - max[h]) v_j, keys in order.
// `scores` holds heads * (end - first) floats. K and V rows are read in their stored dtype and widened in
// registers (an int8 row's scale applied once to its dot product, and folded into its softmax weight for V).
void AttendSegment(const float* q, int heads, const PagedKv& kv, int first, int end, int head_dim, float softcap,
                   float* scores, float* max, float* sum, float* out);

// softmax(cap(q . K^T)) V of one head from its segments in order (max, sum and out of each as AttendSegment gives
// them, `stride` floats apart: out at out + s * stride): rescaled to the largest max, added in segment order.
// One segment: out * (1 / sum).
void CombineSegments(int segments, const float* max, const float* sum, const float* out, int64_t stride,
                     int head_dim, float* result);

}  // namespace gemma
