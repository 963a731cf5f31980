// Launchers of the CUDA backend's kernels (shard/cuda/kernels.cuh), callable from plain C++: device pointers,
// a stream, and the element type of activations that feed GEMMs and of the KV cache. Each returns the launch error.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace gemma::cuda {

enum class Dtype { kF32, kBf16 };
inline int DtypeBytes(Dtype t) { return t == Dtype::kF32 ? 4 : 2; }

// x[t, :] = embed[tokens[t] - vocab_begin, :] * scale (bf16 rows), or zeros when the row is another rank's.
cudaError_t LaunchEmbed(const uint16_t* embed, int64_t rows, int64_t hidden, const int32_t* tokens, int T,
                        int64_t vocab_begin, float scale, float* x, cudaStream_t stream);

// out[r, :] = x[rows[r], :] * rsqrt(mean(x^2) + eps) * w1p (rows null: r itself), written as `out_type`.
cudaError_t LaunchRmsNorm(const float* x, const int32_t* rows, int R, int64_t hidden, const float* w1p, float eps,
                          void* out, Dtype out_type, cudaStream_t stream);

// x += delta, then out = RmsNorm(x) as above: the residual add fused with the next norm.
cudaError_t LaunchAddRmsNorm(float* x, const float* delta, int T, int64_t hidden, const float* w1p, float eps,
                             void* out, Dtype out_type, cudaStream_t stream);

// x[i] = cap * tanh(x[i] / cap): Gemma 2's final logit soft-capping.
cudaError_t LaunchSoftCap(float* x, int64_t n, float cap, cudaStream_t stream);

// x[i] += delta[i].
cudaError_t LaunchAdd(float* x, const float* delta, int64_t n, cudaStream_t stream);

// For token t (row t of qkv, [q heads | k heads | v heads] x head_dim each): rotates q and k (half-split RoPE,
// cos/sin from the table [positions][head_dim/2][2]), scales q by q_scale, and writes k and v to the cache at
// cache_row[t] + kv_head * head_stride (layer bases k_cache, v_cache). With q_norm and k_norm (Gemma 3's QK-norm,
// 1 + w, [head_dim]; null: none) each q and k head is RMS-normalized before the rotation.
cudaError_t LaunchRopeAndCacheWrite(float* qkv, int T, int64_t ld, int num_q, int num_kv, int head_dim,
                                    const float* cos_sin, const int32_t* positions, const int64_t* cache_row,
                                    int64_t head_stride, void* k_cache, void* v_cache, Dtype kv_type, float q_scale,
                                    const float* q_norm, const float* k_norm, float eps, cudaStream_t stream);

// out[t, :] = gelu_tanh(gate_up[t, :I]) * gate_up[t, I:2I].
cudaError_t LaunchGeluMul(const float* gate_up, int T, int64_t I, void* out, Dtype out_type, cudaStream_t stream);

// Causal attention of each token's q heads over its sequence's cached rows 0..positions[t] (paged: row j of a kv
// head at base + block_tables[seq][j / block_size] * block_stride + kv_head * head_stride + (j % block_size) * D).
// q head h of this rank reads kv head (q_head_begin + h) / heads_per_kv - kv_head_begin. out: [T, num_q * D].
// Tokens come in two lists: tokens alone in their sequence's step (decode: split over the context inside a block)
// and tiles of consecutive tokens of one sequence (prefill: K/V staged in shared memory for the whole tile).
struct AttentionArgs {
  const float* qkv;
  int64_t ld;
  int num_q, head_dim;
  const int32_t* single_tokens;
  int num_single;
  const int32_t* tile_first;  // first token of each tile
  const int32_t* tile_count;  // its token count, <= kAttentionTileQueries
  int num_tiles;
  const int32_t* positions;
  const int32_t* seq_of_token;
  const int32_t* block_tables;  // [sequences][max_blocks]
  int max_blocks;
  const void* k_cache;
  const void* v_cache;
  Dtype kv_type;
  int block_size;
  int64_t block_stride, head_stride;
  int heads_per_kv, q_head_begin, kv_head_begin;
  void* out;
  Dtype out_type;
  // Decode: the context of each lone token is split over this many blocks (1: none); partials holds
  // num_single * num_q * splits * (head_dim + 2) floats when splits > 1.
  int splits = 1;
  float* partials = nullptr;
  // Gemma's bf16 cache (head size 256): lone tokens through kernels::StreamedAttention (same results, more of the
  // cache in flight).
  bool streamed = true;
  // Gemma 2/3: a local layer's query at position p sees keys p - window + 1..p (0: every earlier key); scores are
  // soft-capped (softcap * tanh(s / softcap); 0: not).
  int window = 0;
  float softcap = 0;
};
inline constexpr int kAttentionTileQueries = 32;
inline constexpr int kAttentionMaxSplits = 16;
cudaError_t LaunchAttention(const AttentionArgs& args, cudaStream_t stream);

// Causal softmax of attention scores s (f32; `heads` blocks of `rows` rows, head_stride apart, rows ld apart): row i,
// at position first_pos + i, keeps keys 0..first_pos+i of `keys` (the last `window` of them when window > 0), the
// rest become 0; scores are soft-capped first when softcap > 0. p: the same layout in `p_type`.
cudaError_t LaunchCausalSoftmax(const float* s, int64_t ld, int64_t head_stride, int rows, int heads, int keys,
                                int first_pos, int window, float softcap, void* p, Dtype p_type, cudaStream_t stream);

// Positions 0..n-1 of one sequence's cached K and V (layer bases k_cache, v_cache; its block table on the device)
// into out [n][k heads | v heads][head_dim], in the cache's type.
cudaError_t LaunchGatherKv(const void* k_cache, const void* v_cache, const int32_t* block_table, int n, int block_size,
                           int64_t block_stride, int64_t head_stride, int num_kv, int head_dim, void* out,
                           Dtype kv_type, cudaStream_t stream);

// out[i] = bf16(in[i]), rounded to nearest even.
cudaError_t LaunchF32ToBf16(const float* in, void* out, int64_t n, cudaStream_t stream);

// out[i] = float(in[i]) for bf16 bit patterns.
cudaError_t LaunchBf16ToF32(const uint16_t* in, float* out, int64_t n, cudaStream_t stream);

// Draws one token per logits row on the device (see kernels::SampleRows): greedy, temperature, top-k, top-p,
// seeded by (seed, position). params: device array of `rows` entries, each naming its logits row.
struct RowSampling {
  int row;
  float temperature;
  int top_k;
  float top_p;
  uint64_t seed;
  int64_t position;
  const uint32_t* allowed;  // device words of the token mask (see kernels::SampleRows); null: any token
  const float* adjusted;    // the row with penalties applied (LaunchPenalizeRows), drawn from instead; null: none
  int top_n;                // most likely tokens returned with their log-probs, 0..kMaxTopLogprobs
  int32_t* top_ids;         // device [top_n]
  float* top_logprobs;      // device [top_n]
};
inline constexpr int kMaxTopLogprobs = 20;
cudaError_t LaunchSampleRows(const float* logits, int rows, int64_t vocab, const RowSampling* params, int32_t* token,
                             float* logprob, cudaStream_t stream);

// Penalties on the device: each row's logits copied to `adjusted`, then its listed tokens penalized there as the
// host's ApplyPenalties does (repetition: divided when positive, multiplied when negative; presence and
// frequency: for tokens generated at least once).
struct PenaltyRow {
  const float* logits;
  float* adjusted;
  const int32_t* tokens;     // device: distinct tokens of the sequence so far
  const int32_t* generated;  // device: how often each was generated (0: only in the prompt)
  int count;
  float repetition, presence, frequency;
};
cudaError_t LaunchPenalizeRows(const PenaltyRow* rows, int n, int64_t vocab, cudaStream_t stream);

// c[m, n] = sum_k a[m, k] * w[n, k] for M <= kSmallBatchMaxRows (a and w of `type`, a's rows K apart): the decode
// GEMM (kernels::SmallBatchGemm). cudaErrorInvalidValue when M, K, ldw or the pointers do not suit it.
inline constexpr int kSmallBatchMaxRows = 8;
cudaError_t LaunchSmallBatchGemm(const void* a, const void* w, int64_t ldw, float* c, int64_t ldc, int M, int N, int K,
                                 Dtype type, cudaStream_t stream);
bool SmallBatchGemmFits(const void* a, const void* w, int64_t ldw, int M, int K, Dtype type);

}  // namespace gemma::cuda
