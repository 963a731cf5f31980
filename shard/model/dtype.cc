#include "shard/model/dtype.h"

#include <array>
#include <cmath>
#include <utility>

namespace gemma {
namespace {

struct DTypeEntry {
  DType dtype;
  absl::string_view name;
  int size;
};

constexpr std::array<DTypeEntry, 15> kDTypes = {{
    {DType::kBF16, "BF16", 2}, {DType::kF16, "F16", 2},     {DType::kF32, "F32", 4},
    {DType::kF64, "F64", 8},   {DType::kI8, "I8", 1},       {DType::kU8, "U8", 1},
    {DType::kI16, "I16", 2},   {DType::kU16, "U16", 2},     {DType::kI32, "I32", 4},
    {DType::kU32, "U32", 4},   {DType::kI64, "I64", 8},     {DType::kU64, "U64", 8},
    {DType::kBool, "BOOL", 1}, {DType::kF8E4M3, "F8_E4M3", 1}, {DType::kF8E5M2, "F8_E5M2", 1},
}};

const DTypeEntry& Entry(DType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e;
  }
  return kDTypes[0];  // unreachable: every enumerator is in the table
}

}  // namespace

std::optional<DType> DTypeFromName(absl::string_view name) {
  for (const auto& e : kDTypes) {
    if (e.name == name) return e.dtype;
  }
  return std::nullopt;
}

absl::string_view DTypeName(DType dtype) { return Entry(dtype).name; }
int DTypeSize(DType dtype) { return Entry(dtype).size; }

float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

float Fp8E4M3ToF32(uint8_t code) {
  const int exp = (code >> 3) & 0xf, mant = code & 0x7;
  const float sign = (code & 0x80) != 0 ? -1.0f : 1.0f;
  if (exp == 0xf && mant == 0x7) return std::nanf("");
  // Subnormals (exponent field 0) are mant/8 * 2^-6; normals (1 + mant/8) * 2^(exp - 7).
  const float magnitude = exp == 0 ? std::ldexp(static_cast<float>(mant) / 8.0f, -6)
                                   : std::ldexp(1.0f + static_cast<float>(mant) / 8.0f, exp - 7);
  return sign * magnitude;
}

uint8_t F32ToFp8E4M3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  const float a = std::fabs(f);
  if (a >= kFp8E4M3Max) return sign | 0x7e;
  // Codes are consecutive along the number line, 8 per binade, a binade's step 2^(e - 3); below 2^-6 the step is
  // the subnormals' 2^-9, and code 8 (2^-6) continues them. So code = (e + 7) * 8 + round(a / step) - 8, where a
  // rounding up to 16 steps carries into the next binade by itself.
  if (a < std::ldexp(1.0f, -6)) return sign | static_cast<uint8_t>(std::nearbyint(std::ldexp(a, 9)));
  int e;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1): the binade is 2^(e - 1)
  --e;
  const int steps = static_cast<int>(std::nearbyint(std::ldexp(a, 3 - e)));  // 8..16
  return sign | static_cast<uint8_t>((e + 7) * 8 + steps - 8);
}

float FloatElementAsF32(DType dtype, const char* data, int64_t i) {
  switch (dtype) {
    case DType::kBF16: {
      uint16_t b;
      std::memcpy(&b, data + 2 * i, 2);
      return Bf16ToF32(b);
    }
    case DType::kF16: {
      uint16_t b;
      std::memcpy(&b, data + 2 * i, 2);
      return F16ToF32(b);
    }
    default: {
      float f;
      std::memcpy(&f, data + 4 * i, 4);
      return f;
    }
  }
}

uint16_t F32ToF16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const int32_t e = static_cast<int32_t>((x >> 23) & 0xffu);
  uint32_t mant = x & 0x7fffffu;
  if (e == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant != 0 ? 0x200u : 0u));
  const int32_t exp = e - 127 + 15;
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (exp <= 0) {  // a subnormal half, or zero
    if (exp < -10) return sign;
    mant |= 0x800000u;
    const int shift = 14 - exp;
    uint32_t half = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;  // a carry rounds up into the exponent
  return static_cast<uint16_t>(sign | half);
}

}  // namespace gemma
