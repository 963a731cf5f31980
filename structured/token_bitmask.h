// The set of token ids a grammar allows next, as the samplers consume it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace gemma::structured {

// Bit i of word i/32 (LSB first) set = token i allowed; size (vocab + 31) / 32.
using TokenBitmask = std::vector<uint32_t>;

inline bool TokenAllowed(const TokenBitmask& m, int32_t id) {
  return id >= 0 && static_cast<size_t>(id / 32) < m.size() && ((m[id / 32] >> (id % 32)) & 1u) != 0;
}

inline void AllowToken(TokenBitmask& m, int32_t id) { m[id / 32] |= 1u << (id % 32); }

}  // namespace gemma::structured
