// The compiled form of a response format: a graph of value nodes that the pushdown matcher (pda.h) walks.
// Internal to the library.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace gemma::structured {

inline constexpr uint32_t kUnbounded = std::numeric_limits<uint32_t>::max();
// Objects track the keys seen so far in one 64-bit word.
inline constexpr int kMaxProperties = 64;

enum class NodeKind : uint8_t {
  kObject,   // typed object: `keys`/`values`/`required`; or, with `any_keys`, any keys with `values[0]` values
  kArray,    // `items` values, between `min_items` and `max_items` of them
  kString,   // between `min_length` and `max_length` code points
  kNumber,   // `integer`: no fraction or exponent
  kLiteral,  // one of `literals` (compact JSON texts): enum, const, boolean, null
  kAnyOf,    // one of `branches`; also a $ref's alias
};

struct GrammarNode {
  NodeKind kind = NodeKind::kAnyOf;
  // kObject
  bool any_keys = false;
  std::vector<std::string> keys;  // each key as it appears between the quotes (JSON-escaped)
  std::vector<int32_t> values;    // value node per key
  uint64_t required = 0;          // bit i: keys[i] is required
  // kArray
  int32_t items = -1;
  uint32_t min_items = 0, max_items = kUnbounded;
  // kString
  uint32_t min_length = 0, max_length = kUnbounded;
  // kNumber
  bool integer = false;
  // kLiteral
  std::vector<std::string> literals;
  // kAnyOf
  std::vector<int32_t> branches;
};

struct CompiledGrammar {
  std::vector<GrammarNode> nodes;
  int32_t root = -1;
};

}  // namespace gemma::structured
