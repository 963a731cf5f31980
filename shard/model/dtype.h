// Element types of checkpoint tensors and bf16/f16 <-> f32 conversion.
#pragma once

#include "absl/strings/string_view.h"
#include <cstdint>
#include <cstring>
#include <optional>


namespace gemma {

enum class DType { kBF16, kF16, kF32, kF64, kI8, kU8, kI16, kU16, kI32, kU32, kI64, kU64, kBool, kF8E4M3, kF8E5M2 };

// Safetensors dtype name ("BF16") to DType; nullopt for names it does not define.
std::optional<DType> DTypeFromName(absl::string_view name);
absl::string_view DTypeName(DType dtype);
int DTypeSize(DType dtype);

inline float Bf16ToF32(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Round to nearest even, as PyTorch does; NaN stays NaN.
inline uint16_t F32ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

float F16ToF32(uint16_t bits);
// Round to nearest even; overflow to infinity; NaN stays NaN.
uint16_t F32ToF16(float f);

// FP8 E4M3 as float8_e4m3fn defines it: no infinities, 0x7f and 0xff are NaN, the largest finite value 448.
float Fp8E4M3ToF32(uint8_t code);
// Round to nearest even, saturating at +-448 (quantizers clamp before they cast); NaN gives 0x7f.
uint8_t F32ToFp8E4M3(float f);
// The largest finite E4M3 value: a per-channel scale maps a row's largest |w| onto it.
inline constexpr float kFp8E4M3Max = 448.0f;

// Element i of a BF16, F16 or F32 array (any alignment) as f32.
float FloatElementAsF32(DType dtype, const char* data, int64_t i);

}  // namespace gemma
