// The tensor-core decode GEMM (decode_gemm.h).
//
// Each warp computes 16 output columns (weight rows) for every activation row, over its block's part of K. The
// mma's k16 slice is a permutation of memory order: lane (g, t) = (lane / 4, lane % 4) loads 16 bytes, elements
// [8t, 8t + 8) of a 32-element chunk, of weight rows g and g + 8 and of activation row 8j + g of each n-tile j, and
// feeds elements 8t..8t+3 to one mma and 8t+4..8t+7 to the next. Weights and activations take the same
// permutation, so the sum is the product's; the loads are whole 64-byte runs per row and need no shared memory.
#include <cuda_bf16.h>

#include "shard/cuda/decode_gemm.h"
#include "shard/cuda/launch.cuh"

namespace gemma::cuda {
namespace {

constexpr int kWarps = kDecodeMmaFeaturesPerBlock / 16;
constexpr int kUnroll = 4;  // chunks of weights loaded before the first is used: 4 KiB in flight per warp

__device__ __forceinline__ void Mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

template <int kTiles>
__global__ void __launch_bounds__(kWarps * 32)
    DecodeMma(const __nv_bfloat16* __restrict__ a, const __nv_bfloat16* __restrict__ w, int64_t ldw,
              float* __restrict__ c, int64_t ldc, int M, int N, int K, int k_per_split, float* partials,
              unsigned* counters) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int column = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const int n_lo = column * kDecodeMmaFeaturesPerBlock + warp * 16 + g, n_hi = n_lo + 8;
  // Rows past the end read a valid row; their results are never stored.
  const __nv_bfloat16* w_lo = w + static_cast<int64_t>(min(n_lo, N - 1)) * ldw + 8 * t;
  const __nv_bfloat16* w_hi = w + static_cast<int64_t>(min(n_hi, N - 1)) * ldw + 8 * t;
  const int k_begin = split * k_per_split, k_end = min(K, k_begin + k_per_split);
  float acc[kTiles][4];
#pragma unroll
  for (int j = 0; j < kTiles; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;

  // Streamed once (evict-first), so that the activations every warp rereads stay cached.
  auto load = [&](int k0, uint4 (&lo)[kUnroll], uint4 (&hi)[kUnroll]) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int k = k0 + u * kDecodeMmaChunk;
      lo[u] = k < k_end ? __ldcs(reinterpret_cast<const uint4*>(w_lo + k)) : make_uint4(0, 0, 0, 0);
      hi[u] = k < k_end ? __ldcs(reinterpret_cast<const uint4*>(w_hi + k)) : make_uint4(0, 0, 0, 0);
    }
  };
  // The weights do not depend on the kernel before: their first loads go out before waiting for it, and each
  // round's loads before the previous round's products.
  kernels::LetNextLaunch();
  uint4 next_lo[kUnroll], next_hi[kUnroll];
  load(k_begin, next_lo, next_hi);
  kernels::WaitForPrevious();
  for (int k0 = k_begin; k0 < k_end; k0 += kUnroll * kDecodeMmaChunk) {
    uint4 wl[kUnroll], wh[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      wl[u] = next_lo[u];
      wh[u] = next_hi[u];
    }
    if (k0 + kUnroll * kDecodeMmaChunk < k_end) load(k0 + kUnroll * kDecodeMmaChunk, next_lo, next_hi);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int k = k0 + u * kDecodeMmaChunk;
      if (k >= k_end) break;
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        const int row = min(8 * j + g, M - 1);
        const uint4 av = __ldg(reinterpret_cast<const uint4*>(a + static_cast<int64_t>(row) * K + k + 8 * t));
        Mma(acc[j], wl[u].x, wh[u].x, wl[u].y, wh[u].y, av.x, av.y);
        Mma(acc[j], wl[u].z, wh[u].z, wl[u].w, wh[u].w, av.z, av.w);
      }
    }
  }

  // Accumulator (j, i): row 8j + 2t + (i & 1), column n_lo (i < 2) or n_hi.
  float* out = c;
  int64_t ld = ldc;
  if (splits > 1) {
    out = partials + static_cast<int64_t>(split) * M * N;
    ld = N;
  }
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = 8 * j + 2 * t + (i & 1), n = i < 2 ? n_lo : n_hi;
      if (m < M && n < N) out[static_cast<int64_t>(m) * ld + n] = acc[j][i];
    }
  }
  if (splits == 1) return;

  // The last block of this column to finish adds the splits' sums in split order.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&counters[column], 1u) == static_cast<unsigned>(splits - 1);
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int n_begin = column * kDecodeMmaFeaturesPerBlock;
  for (int e = threadIdx.x; e < M * kDecodeMmaFeaturesPerBlock; e += blockDim.x) {
    const int m = e / kDecodeMmaFeaturesPerBlock, n = n_begin + e % kDecodeMmaFeaturesPerBlock;
    if (n >= N) continue;
    float sum = 0.0f;
    for (int q = 0; q < splits; ++q) sum += __ldcg(partials + (static_cast<int64_t>(q) * M + m) * N + n);
    c[static_cast<int64_t>(m) * ldc + n] = sum;
  }
  if (threadIdx.x == 0) counters[column] = 0;
}

template <int kTiles>
void LaunchTiles(const __nv_bfloat16* a, const __nv_bfloat16* w, int64_t ldw, float* c, int64_t ldc, int M, int N, int K,
            int splits, const DecodeMmaWorkspace& ws, cudaStream_t stream) {
  const dim3 grid((N + kDecodeMmaFeaturesPerBlock - 1) / kDecodeMmaFeaturesPerBlock, splits);
  Launch(DecodeMma<kTiles>, grid, dim3(kWarps * 32), stream, a, w, ldw, c, ldc, M, N, K, K / splits, ws.partials,
         ws.counters);
}

}  // namespace

bool DecodeMmaFits(const void* a, const void* w, int64_t ldw, int M, int64_t N, int64_t K, int splits,
                   const DecodeMmaWorkspace& ws) {
  if (M < 1 || M > kDecodeMmaMaxRows || N < 1 || N > INT32_MAX || K < kDecodeMmaChunk || K > INT32_MAX) return false;
  if (K % kDecodeMmaChunk != 0 || ldw % 8 != 0 || reinterpret_cast<uintptr_t>(a) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(w) % 16 != 0) {
    return false;
  }
  if (splits < 1 || K % (static_cast<int64_t>(splits) * kDecodeMmaChunk) != 0) return false;
  if (splits == 1) return true;
  const int64_t columns = (N + kDecodeMmaFeaturesPerBlock - 1) / kDecodeMmaFeaturesPerBlock;
  return ws.partials != nullptr && ws.counters != nullptr && columns <= ws.counter_count &&
         static_cast<int64_t>(splits) * M * N <= ws.partial_floats;
}

cudaError_t LaunchDecodeMmaGemm(const void* a, const void* w, int64_t ldw, float* c, int64_t ldc, int M, int N, int K,
                                int splits, const DecodeMmaWorkspace& ws, cudaStream_t stream) {
  if (!DecodeMmaFits(a, w, ldw, M, N, K, splits, ws)) return cudaErrorInvalidValue;
  const auto* a16 = static_cast<const __nv_bfloat16*>(a);
  const auto* w16 = static_cast<const __nv_bfloat16*>(w);
  switch ((M + 7) / 8) {
    case 1: LaunchTiles<1>(a16, w16, ldw, c, ldc, M, N, K, splits, ws, stream); break;
    case 2: LaunchTiles<2>(a16, w16, ldw, c, ldc, M, N, K, splits, ws, stream); break;
    case 3: LaunchTiles<3>(a16, w16, ldw, c, ldc, M, N, K, splits, ws, stream); break;
    case 4: LaunchTiles<4>(a16, w16, ldw, c, ldc, M, N, K, splits, ws, stream); break;
    case 5: LaunchTiles<5>(a16, w16, ldw, c, ldc, M, N, K, splits, ws, stream); break;
    case 6: LaunchTiles<6>(a16, w16, ldw, c, ldc, M, N, K, splits, ws, stream); break;
    case 7: LaunchTiles<7>(a16, w16, ldw, c, ldc, M, N, K, splits, ws, stream); break;
    case 8: LaunchTiles<8>(a16, w16, ldw, c, ldc, M, N, K, splits, ws, stream); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace gemma::cuda
