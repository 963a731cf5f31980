// The quantized weight kernels (quantized_kernels.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>


#include "shard/cuda/device_values.cuh"
#include "shard/cuda/launch.cuh"
#include "shard/cuda/quantized_kernels.h"

namespace gemma::cuda {
namespace kernels {
namespace {

// The f32 bits of 2^23 + b for a byte b < 256: integer-to-float conversion without the conversion unit, which
// runs at a fraction of the rate of the products here.
constexpr uint32_t kTwo23Bits = 0x4B000000u;
constexpr float kTwo23 = 8388608.0f;

__device__ __forceinline__ float Fp8ToFloat(uint8_t code) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3);
  return __half2float(__half(h));
}

// One element, exactly as the host's ElementAt computes it.
__device__ __forceinline__ float Element(const QuantMatrix& w, int64_t r, int64_t k) {
  switch (w.format) {
    case QuantFormat::kInt8:
      return static_cast<float>(static_cast<int8_t>(w.codes[r * w.cols + k])) * w.scales[r];
    case QuantFormat::kFp8:
      return Fp8ToFloat(w.codes[r * w.cols + k]) * w.scales[r];
    case QuantFormat::kInt4: {
      const uint8_t byte = w.codes[r * (w.cols / 2) + k / 2];
      const int code = (k % 2 == 0) ? (byte & 0xF) : (byte >> 4);
      const int64_t g = r * (w.cols / w.group_size) + k / w.group_size;
      return (static_cast<float>(code) - w.zeros[g]) * w.scales[g];
    }
  }
  return 0.0f;
}

// The 16 int8 codes of a 16-byte load: c ^ 0x80 is c + 128 as an unsigned byte, placed under 2^23's exponent.
__device__ __forceinline__ void DecodeInt8(const uint4& v, float (&w)[16]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t u = words[i] ^ 0x80808080u;
#pragma unroll
    for (int j = 0; j < 4; ++j) w[4 * i + j] = __uint_as_float(__byte_perm(u, kTwo23Bits, 0x7540 + j)) - (kTwo23 + 128.0f);
  }
}

// The 16 E4M3 codes of a 16-byte load, two at a time through the hardware's fp8x2 -> f16x2 conversion (exact:
// every E4M3 value is an f16 value).
__device__ __forceinline__ void DecodeFp8(const uint4& v, float (&w)[16]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      const __half2_raw h =
          __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(words[i] >> (16 * p)), __NV_E4M3);
      const float2 f = __half22float2(__half2(h));
      w[4 * i + 2 * p] = f.x;
      w[4 * i + 2 * p + 1] = f.y;
    }
  }
}

// The 32 int4 codes of a 16-byte load minus their group's zero (whole numbers: exact), element 2i in byte i's low
// nibble.
__device__ __forceinline__ void DecodeInt4(const uint4& v, float zero, float (&w)[32]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
  const float offset = kTwo23 + zero;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 8; ++j) w[8 * i + j] = __uint_as_float(kTwo23Bits | ((words[i] >> (4 * j)) & 0xFu)) - offset;
  }
}

// SmallBatchGemm's shape (kernels.cuh) over codes: one warp per output row, each lane's 16-byte loads four deep
// and streamed (evict-first), the activations read through the cache.
template <typename T, QuantFormat F, int kM>
__global__ void __launch_bounds__(256) QuantizedGemm(QuantMatrix w, const T* a, float* c, int64_t ldc) {
  constexpr int kElems = F == QuantFormat::kInt4 ? 32 : 16;  // per 16-byte load
  constexpr int kPerActLoad = 16 / sizeof(T);
  constexpr int kActLoads = kElems / kPerActLoad;
  constexpr int kUnroll = 4;
  constexpr int64_t kStride = 32 * 16;  // bytes between one lane's consecutive loads
  const int64_t K = w.cols;
  const int64_t row_bytes = F == QuantFormat::kInt4 ? K / 2 : K;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (n >= w.rows) return AfterPrevious();
  const uint8_t* row = w.codes + n * row_bytes;
  auto load = [&](int64_t b0, uint4 (&v)[kUnroll]) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t b = b0 + u * kStride;
      v[u] = b < row_bytes ? __ldcs(reinterpret_cast<const uint4*>(row + b)) : make_uint4(0, 0, 0, 0);
    }
  };
  // The codes do not depend on the kernel before: their first loads go out before waiting for it.
  LetNextLaunch();
  uint4 next[kUnroll];
  load(lane * 16, next);
  WaitForPrevious();
  float acc[kM];
#pragma unroll
  for (int m = 0; m < kM; ++m) acc[m] = 0.0f;
  for (int64_t b0 = lane * 16; b0 < row_bytes; b0 += kStride * kUnroll) {
    uint4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) v[u] = next[u];
    if (b0 + kStride * kUnroll < row_bytes) load(b0 + kStride * kUnroll, next);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t b = b0 + u * kStride;
      if (b >= row_bytes) break;
      const int64_t k = F == QuantFormat::kInt4 ? 2 * b : b;
      float wf[kElems];
      float scale = 1.0f;
      if constexpr (F == QuantFormat::kInt4) {
        // A load's 32 codes lie in one group: groups are 32, 64 or 128 columns and loads start at multiples of 32.
        const int64_t g = n * (K / w.group_size) + k / w.group_size;
        scale = __ldg(w.scales + g);
        DecodeInt4(v[u], __ldg(w.zeros + g), wf);
      } else if constexpr (F == QuantFormat::kInt8) {
        DecodeInt8(v[u], wf);
      } else {
        DecodeFp8(v[u], wf);
      }
#pragma unroll
      for (int m = 0; m < kM; ++m) {
        const T* am = a + m * K + k;
        float part = 0.0f;
#pragma unroll
        for (int q = 0; q < kActLoads; ++q) {
          float af[kPerActLoad];
          Unpack(__ldg(reinterpret_cast<const uint4*>(am) + q), af, T());
#pragma unroll
          for (int e = 0; e < kPerActLoad; ++e) part += af[e] * wf[q * kPerActLoad + e];
        }
        if constexpr (F == QuantFormat::kInt4) {
          acc[m] += scale * part;
        } else {
          acc[m] += part;
        }
      }
    }
  }
  const float row_scale = F == QuantFormat::kInt4 ? 1.0f : __ldg(w.scales + n);
#pragma unroll
  for (int m = 0; m < kM; ++m) {
    const float sum = WarpSum(acc[m]);
    if (lane == 0) c[m * ldc + n] = sum * row_scale;
  }
}

// One block per row: no division per element.
template <typename Out>
__global__ void Dequantize(QuantMatrix w, int64_t row_begin, Out* dst) {
  AfterPrevious();
  const int64_t r = blockIdx.x;
  Out* out = dst + r * w.cols;
  for (int64_t k = threadIdx.x; k < w.cols; k += blockDim.x) Store(&out[k], Element(w, row_begin + r, k));
}

__global__ void EmbedQuantized(QuantMatrix w, const int32_t* tokens, int64_t vocab_begin, float scale, float* x) {
  AfterPrevious();
  const int t = blockIdx.x;
  const int64_t local = static_cast<int64_t>(tokens[t]) - vocab_begin;
  float* out = x + t * w.cols;
  const bool mine = local >= 0 && local < w.rows;
  for (int64_t i = threadIdx.x; i < w.cols; i += blockDim.x) out[i] = mine ? Element(w, local, i) * scale : 0.0f;
}

__global__ void EmbedF32(const float* table, int64_t rows, int64_t hidden, const int32_t* tokens, int64_t vocab_begin,
                         float scale, float* x) {
  AfterPrevious();
  const int t = blockIdx.x;
  const int64_t local = static_cast<int64_t>(tokens[t]) - vocab_begin;
  float* out = x + t * hidden;
  const bool mine = local >= 0 && local < rows;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) out[i] = mine ? table[local * hidden + i] * scale : 0.0f;
}

}  // namespace
}  // namespace kernels

namespace {

template <typename T, QuantFormat F>
cudaError_t LaunchGemmRows(const QuantMatrix& w, const T* a, int M, float* c, int64_t ldc, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((w.rows + 7) / 8)), block(256);
  switch (M) {
    case 1: return Launch(kernels::QuantizedGemm<T, F, 1>, grid, block, stream, w, a, c, ldc);
    case 2: return Launch(kernels::QuantizedGemm<T, F, 2>, grid, block, stream, w, a, c, ldc);
    case 3: return Launch(kernels::QuantizedGemm<T, F, 3>, grid, block, stream, w, a, c, ldc);
    case 4: return Launch(kernels::QuantizedGemm<T, F, 4>, grid, block, stream, w, a, c, ldc);
    case 5: return Launch(kernels::QuantizedGemm<T, F, 5>, grid, block, stream, w, a, c, ldc);
    case 6: return Launch(kernels::QuantizedGemm<T, F, 6>, grid, block, stream, w, a, c, ldc);
    case 7: return Launch(kernels::QuantizedGemm<T, F, 7>, grid, block, stream, w, a, c, ldc);
    case 8: return Launch(kernels::QuantizedGemm<T, F, 8>, grid, block, stream, w, a, c, ldc);
  }
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t LaunchGemmFormat(const QuantMatrix& w, const T* a, int M, float* c, int64_t ldc, cudaStream_t stream) {
  switch (w.format) {
    case QuantFormat::kInt8: return LaunchGemmRows<T, QuantFormat::kInt8>(w, a, M, c, ldc, stream);
    case QuantFormat::kInt4: return LaunchGemmRows<T, QuantFormat::kInt4>(w, a, M, c, ldc, stream);
    case QuantFormat::kFp8: return LaunchGemmRows<T, QuantFormat::kFp8>(w, a, M, c, ldc, stream);
  }
  return cudaErrorInvalidValue;
}


}  // namespace

bool QuantizedGemmTakes(const QuantMatrix& w, int64_t M) {
  const int64_t per_load = w.format == QuantFormat::kInt4 ? 32 : 16;
  return M >= 1 && M <= kQuantizedGemmMaxRows && w.cols % per_load == 0 &&
         (w.format != QuantFormat::kInt4 || (w.group_size % 32 == 0 && w.group_size > 0));
}

cudaError_t LaunchQuantizedGemm(const QuantMatrix& w, const void* a, Dtype a_type, int M, float* c, int64_t ldc,
                                cudaStream_t stream) {
  if (!QuantizedGemmTakes(w, M)) return cudaErrorInvalidValue;
  if (a_type == Dtype::kF32) return LaunchGemmFormat(w, static_cast<const float*>(a), M, c, ldc, stream);
  return LaunchGemmFormat(w, static_cast<const __nv_bfloat16*>(a), M, c, ldc, stream);
}

cudaError_t LaunchDequantize(const QuantMatrix& w, int64_t row_begin, int64_t rows, Dtype out, void* dst,
                             cudaStream_t stream) {
  if (row_begin < 0 || rows < 0 || row_begin + rows > w.rows) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(rows)), block(256);
  if (out == Dtype::kF32) return Launch(kernels::Dequantize<float>, grid, block, stream, w, row_begin, static_cast<float*>(dst));
  return Launch(kernels::Dequantize<__nv_bfloat16>, grid, block, stream, w, row_begin, static_cast<__nv_bfloat16*>(dst));
}

cudaError_t LaunchEmbedQuantized(const QuantMatrix& w, const int32_t* tokens, int T, int64_t vocab_begin, float scale,
                                 float* x, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  return Launch(kernels::EmbedQuantized, dim3(T), dim3(256), stream, w, tokens, vocab_begin, scale, x);
}

cudaError_t LaunchEmbedF32(const float* table, int64_t rows, int64_t hidden, const int32_t* tokens, int T,
                           int64_t vocab_begin, float scale, float* x, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  return Launch(kernels::EmbedF32, dim3(T), dim3(256), stream, table, rows, hidden, tokens, vocab_begin, scale, x);
}

}  // namespace gemma::cuda
