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

// Causal attention of one (already RoPE'd and scaled) query head over key positions first..end-1:
// out = softmax(cap(q . K^T)) V, where cap(s) = softcap * tanh(s / softcap) (softcap 0: none). A sliding window
// is a `first` past 0. `scores` holds end - first floats. K and V rows are read in their stored dtype and widened in
// registers (an int8 row's scale applied once to its dot product, and folded into its softmax weight for V).
void AttendOneHead(const float* q, const PagedKv& kv, int first, int end, int head_dim, float softcap, float* scores,
                   float* out);

}  // namespace gemma
