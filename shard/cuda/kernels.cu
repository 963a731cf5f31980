// Launchers: pick the template for the element types, size the grid, and report the launch error.
#include <type_traits>

#include "shard/cuda/kernels.cuh"
#include "shard/cuda/kernels.h"

namespace gemma::cuda {

namespace {
thread_local bool programmatic_launch = false;
}  // namespace

bool ProgrammaticLaunchEnabled() { return programmatic_launch; }
ProgrammaticLaunchScope::ProgrammaticLaunchScope(bool on) : before_(programmatic_launch) { programmatic_launch = on; }
ProgrammaticLaunchScope::~ProgrammaticLaunchScope() { programmatic_launch = before_; }

namespace {

using kernels::kAttentionWarps;

// A row per block, wide enough that a decode step's few rows are not each one block's long loop.
constexpr int kNormThreads = 1024;

int Blocks(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<int>(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}

}  // namespace

cudaError_t LaunchEmbed(const uint16_t* embed, int64_t rows, int64_t hidden, const int32_t* tokens, int T,
                        int64_t vocab_begin, float scale, float* x, cudaStream_t stream) {
  Launch(kernels::Embed, dim3(T), dim3(256), stream, embed, rows, hidden, tokens, vocab_begin, scale, x);
  return cudaGetLastError();
}

cudaError_t LaunchRmsNorm(const float* x, const int32_t* rows, int R, int64_t hidden, const float* w1p, float eps,
                          void* out, Dtype out_type, cudaStream_t stream) {
  if (out_type == Dtype::kF32) {
    Launch(kernels::RmsNorm<float>, dim3(R), dim3(kNormThreads), stream, x, rows, hidden, w1p, eps, static_cast<float*>(out));
  } else {
    Launch(kernels::RmsNorm<__nv_bfloat16>, dim3(R), dim3(kNormThreads), stream, x, rows, hidden, w1p, eps, static_cast<__nv_bfloat16*>(out));
  }
  return cudaGetLastError();
}

cudaError_t LaunchAddRmsNorm(float* x, const float* delta, int T, int64_t hidden, const float* w1p, float eps,
                             void* out, Dtype out_type, cudaStream_t stream) {
  if (out_type == Dtype::kF32) {
    Launch(kernels::AddRmsNorm<float>, dim3(T), dim3(kNormThreads), stream, x, delta, hidden, w1p, eps, static_cast<float*>(out));
  } else {
    Launch(kernels::AddRmsNorm<__nv_bfloat16>, dim3(T), dim3(kNormThreads), stream, x, delta, hidden, w1p, eps, static_cast<__nv_bfloat16*>(out));
  }
  return cudaGetLastError();
}

cudaError_t LaunchSoftCap(float* x, int64_t n, float cap, cudaStream_t stream) {
  Launch(kernels::SoftCapInPlace, dim3(Blocks(n, 256)), dim3(256), stream, x, n, cap);
  return cudaGetLastError();
}

cudaError_t LaunchAdd(float* x, const float* delta, int64_t n, cudaStream_t stream) {
  Launch(kernels::Add, dim3(Blocks(n, 256)), dim3(256), stream, x, delta, n);
  return cudaGetLastError();
}

cudaError_t LaunchRopeAndCacheWrite(float* qkv, int T, int64_t ld, int num_q, int num_kv, int head_dim,
                                    const float* cos_sin, const int32_t* positions, const int64_t* cache_row,
                                    int64_t head_stride, void* k_cache, void* v_cache, Dtype kv_type, float q_scale,
                                    const float* q_norm, const float* k_norm, float eps, cudaStream_t stream) {
  if (kv_type == Dtype::kF32) {
    Launch(kernels::RopeAndCacheWrite<float>, dim3(T, num_q + num_kv), dim3(128), stream, qkv, ld, num_q, num_kv, head_dim, cos_sin, positions, cache_row,
                                                      head_stride, static_cast<float*>(k_cache),
                                                      static_cast<float*>(v_cache), q_scale, q_norm, k_norm, eps);
  } else {
    Launch(kernels::RopeAndCacheWrite<__nv_bfloat16>, dim3(T, num_q + num_kv), dim3(128), stream, qkv, ld, num_q, num_kv, head_dim, cos_sin, positions, cache_row,
                                                      head_stride, static_cast<__nv_bfloat16*>(k_cache),
                                                      static_cast<__nv_bfloat16*>(v_cache), q_scale, q_norm, k_norm,
                                                      eps);
  }
  return cudaGetLastError();
}

cudaError_t LaunchGeluMul(const float* gate_up, int T, int64_t I, void* out, Dtype out_type, cudaStream_t stream) {
  const int64_t n = T * I;
  if (out_type == Dtype::kF32) {
    Launch(kernels::GeluMul<float>, dim3(Blocks(n, 256)), dim3(256), stream, gate_up, I, n, static_cast<float*>(out));
  } else {
    Launch(kernels::GeluMul<__nv_bfloat16>, dim3(Blocks(n, 256)), dim3(256), stream, gate_up, I, n, static_cast<__nv_bfloat16*>(out));
  }
  return cudaGetLastError();
}

namespace {

static_assert(kAttentionTileQueries == kernels::kTileQueries);

// Gemma's head size (256, 2B and 7B) gets kernels specialized for it; any other size (the tiny test checkpoints)
// the general ones.
constexpr int kGemmaHeadDim = 256;

template <typename Kv, typename Out, int kHeadDim>
void Attend(const AttentionArgs& a, cudaStream_t stream) {
  const auto* k = static_cast<const Kv*>(a.k_cache);
  const auto* v = static_cast<const Kv*>(a.v_cache);
  auto* out = static_cast<Out*>(a.out);
  if (a.num_single > 0) {
    const int splits = a.partials != nullptr ? a.splits : 1;
    bool streamed = false;
    if constexpr (kHeadDim == kGemmaHeadDim && std::is_same_v<Kv, __nv_bfloat16>) {
      if (a.streamed) {
        Launch(kernels::StreamedAttention<Out>, dim3(a.num_single, a.num_q, splits), dim3(kAttentionWarps * 32), stream,
               a.single_tokens, a.qkv, a.ld, a.positions, a.seq_of_token, a.block_tables, a.max_blocks, k, v,
               a.block_size, a.block_stride, a.head_stride, a.heads_per_kv, a.q_head_begin, a.kv_head_begin, a.num_q,
               out, a.partials, a.window, a.softcap);
        streamed = true;
      }
    }
    if (!streamed) {
      Launch(kernels::PagedAttention<Kv, Out, kHeadDim>, dim3(a.num_single, a.num_q, splits),
             dim3(kAttentionWarps * 32), stream, a.single_tokens, a.qkv, a.ld, a.head_dim, a.positions, a.seq_of_token,
             a.block_tables, a.max_blocks, k, v, a.block_size, a.block_stride, a.head_stride, a.heads_per_kv,
             a.q_head_begin, a.kv_head_begin, a.num_q, out, a.partials, a.window, a.softcap);
    }
    if (splits > 1) {
      Launch(kernels::CombineSplits<Out>, dim3(a.num_single, a.num_q), dim3(128), stream, a.single_tokens, a.partials,
             splits, a.head_dim, a.num_q, out);
    }
  }
  if (a.num_tiles > 0) {
    kernels::TiledAttention<Kv, Out, kHeadDim><<<dim3(a.num_tiles, a.num_q), kernels::kTileQueries * kernels::kPartsPerQuery, 0,
                                       stream>>>(
        a.tile_first, a.tile_count, a.qkv, a.ld, a.head_dim, a.positions, a.seq_of_token, a.block_tables, a.max_blocks,
        k, v, a.block_size, a.block_stride, a.head_stride, a.heads_per_kv, a.q_head_begin, a.kv_head_begin, a.num_q, out,
        a.window, a.softcap);
  }
}

}  // namespace

cudaError_t LaunchAttention(const AttentionArgs& a, cudaStream_t stream) {
  if (a.head_dim > kernels::kMaxHeadDim || a.head_dim % kernels::kPartsPerQuery != 0) return cudaErrorInvalidValue;
  if (a.splits < 1 || a.splits > kAttentionMaxSplits) return cudaErrorInvalidValue;
  const bool kv32 = a.kv_type == Dtype::kF32, out32 = a.out_type == Dtype::kF32;
  const bool gemma = a.head_dim == kGemmaHeadDim;
  if (kv32 && out32) gemma ? Attend<float, float, kGemmaHeadDim>(a, stream) : Attend<float, float, 0>(a, stream);
  if (kv32 && !out32) {
    gemma ? Attend<float, __nv_bfloat16, kGemmaHeadDim>(a, stream) : Attend<float, __nv_bfloat16, 0>(a, stream);
  }
  if (!kv32 && out32) {
    gemma ? Attend<__nv_bfloat16, float, kGemmaHeadDim>(a, stream) : Attend<__nv_bfloat16, float, 0>(a, stream);
  }
  if (!kv32 && !out32) {
    gemma ? Attend<__nv_bfloat16, __nv_bfloat16, kGemmaHeadDim>(a, stream)
          : Attend<__nv_bfloat16, __nv_bfloat16, 0>(a, stream);
  }
  return cudaGetLastError();
}

cudaError_t LaunchCausalSoftmax(const float* s, int64_t ld, int64_t head_stride, int rows, int heads, int keys,
                                int first_pos, int window, float softcap, void* p, Dtype p_type, cudaStream_t stream) {
  const dim3 grid(rows, heads);
  if (p_type == Dtype::kF32) {
    kernels::CausalSoftmax<<<grid, 256, 0, stream>>>(s, ld, head_stride, keys, first_pos, window, softcap,
                                                     static_cast<float*>(p));
  } else {
    kernels::CausalSoftmax<<<grid, 256, 0, stream>>>(s, ld, head_stride, keys, first_pos, window, softcap,
                                                     static_cast<__nv_bfloat16*>(p));
  }
  return cudaGetLastError();
}

cudaError_t LaunchGatherKv(const void* k_cache, const void* v_cache, const int32_t* block_table, int n, int block_size,
                           int64_t block_stride, int64_t head_stride, int num_kv, int head_dim, void* out,
                           Dtype kv_type, cudaStream_t stream) {
  const dim3 grid(n, num_kv);
  if (kv_type == Dtype::kF32) {
    kernels::GatherKv<<<grid, 128, 0, stream>>>(static_cast<const float*>(k_cache), static_cast<const float*>(v_cache),
                                                block_table, block_size, block_stride, head_stride, num_kv, head_dim,
                                                static_cast<float*>(out));
  } else {
    kernels::GatherKv<<<grid, 128, 0, stream>>>(static_cast<const __nv_bfloat16*>(k_cache),
                                                static_cast<const __nv_bfloat16*>(v_cache), block_table, block_size,
                                                block_stride, head_stride, num_kv, head_dim,
                                                static_cast<__nv_bfloat16*>(out));
  }
  return cudaGetLastError();
}

cudaError_t LaunchF32ToBf16(const float* in, void* out, int64_t n, cudaStream_t stream) {
  kernels::F32ToBf16<<<Blocks(n, 256), 256, 0, stream>>>(in, static_cast<__nv_bfloat16*>(out), n);
  return cudaGetLastError();
}

cudaError_t LaunchBf16ToF32(const uint16_t* in, float* out, int64_t n, cudaStream_t stream) {
  kernels::Bf16ToF32<<<Blocks(n, 256), 256, 0, stream>>>(in, out, n);
  return cudaGetLastError();
}

static_assert(sizeof(RowSampling) == sizeof(kernels::RowSamplingParams));
static_assert(sizeof(PenaltyRow) == sizeof(kernels::PenaltyRowParams));
static_assert(kMaxTopLogprobs == kernels::kMaxTopLogprobs);

cudaError_t LaunchPenalizeRows(const PenaltyRow* rows, int n, int64_t vocab, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  kernels::PenalizeRows<<<n, 1024, 0, stream>>>(reinterpret_cast<const kernels::PenaltyRowParams*>(rows), vocab);
  return cudaGetLastError();
}

cudaError_t LaunchSampleRows(const float* logits, int rows, int64_t vocab, const RowSampling* params, int32_t* token,
                             float* logprob, cudaStream_t stream) {
  kernels::SampleRows<<<rows, 1024, 0, stream>>>(logits, vocab, reinterpret_cast<const kernels::RowSamplingParams*>(params),
                                                  token, logprob);
  return cudaGetLastError();
}

bool SmallBatchGemmFits(const void* a, const void* w, int64_t ldw, int M, int K, Dtype type) {
  const int per_load = 16 / DtypeBytes(type);
  return M >= 1 && M <= kSmallBatchMaxRows && K % per_load == 0 && ldw % per_load == 0 &&
         reinterpret_cast<uintptr_t>(a) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

namespace {

template <typename T>
cudaError_t SmallBatch(const T* a, const T* w, int64_t ldw, float* c, int64_t ldc, int M, int N, int K,
                       cudaStream_t stream) {
  const int blocks = (N + 7) / 8;  // 8 warps, one output row each
  switch (M) {
    case 1: Launch(kernels::SmallBatchGemm<T, 1>, dim3(blocks), dim3(256), stream, a, w, ldw, c, ldc, N, K); break;
    case 2: Launch(kernels::SmallBatchGemm<T, 2>, dim3(blocks), dim3(256), stream, a, w, ldw, c, ldc, N, K); break;
    case 3: Launch(kernels::SmallBatchGemm<T, 3>, dim3(blocks), dim3(256), stream, a, w, ldw, c, ldc, N, K); break;
    case 4: Launch(kernels::SmallBatchGemm<T, 4>, dim3(blocks), dim3(256), stream, a, w, ldw, c, ldc, N, K); break;
    case 5: Launch(kernels::SmallBatchGemm<T, 5>, dim3(blocks), dim3(256), stream, a, w, ldw, c, ldc, N, K); break;
    case 6: Launch(kernels::SmallBatchGemm<T, 6>, dim3(blocks), dim3(256), stream, a, w, ldw, c, ldc, N, K); break;
    case 7: Launch(kernels::SmallBatchGemm<T, 7>, dim3(blocks), dim3(256), stream, a, w, ldw, c, ldc, N, K); break;
    case 8: Launch(kernels::SmallBatchGemm<T, 8>, dim3(blocks), dim3(256), stream, a, w, ldw, c, ldc, N, K); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchSmallBatchGemm(const void* a, const void* w, int64_t ldw, float* c, int64_t ldc, int M, int N, int K,
                                 Dtype type, cudaStream_t stream) {
  if (!SmallBatchGemmFits(a, w, ldw, M, K, type)) return cudaErrorInvalidValue;
  if (type == Dtype::kF32) {
    return SmallBatch(static_cast<const float*>(a), static_cast<const float*>(w), ldw, c, ldc, M, N, K, stream);
  }
  return SmallBatch(static_cast<const __nv_bfloat16*>(a), static_cast<const __nv_bfloat16*>(w), ldw, c, ldc, M, N, K,
                    stream);
}

}  // namespace gemma::cuda
