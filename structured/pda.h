// The byte-level pushdown automaton that matches compact JSON against a CompiledGrammar. Internal to the library.
//
// A matcher state is a set of stacks of frames (nondeterminism: anyOf branches, or enum values, that share a
// prefix each keep a stack). The output is compact JSON: no whitespace anywhere, which keeps masks small and makes
// schemas that bound their strings and arrays terminate. Numbers have at most 19 integer digits, 17 fraction
// digits and 3 exponent digits, the exponent at most 289 (so every number is a finite double). Strings are valid
// UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF), with the escapes \" \\ \/ \b \f \n \r \t \uXXXX
// (not U+D800..U+DFFF: a character beyond the BMP is written as UTF-8) and no raw control characters; their
// lengths count code points.
//
// While matching, stacks are persistent linked lists in a StackArena (a frame change pushes one node that shares
// the rest), so a depth-first walk of the vocabulary trie can step and then drop states in stack order.
#pragma once

#include <compare>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "structured/grammar_nodes.h"

namespace gemma::structured {

enum class FrameKind : uint8_t { kValue, kObject, kArray, kString, kNumber, kLiteral };

// One value being matched. Every field is canonical (unused fields zero), so equal positions compare equal.
struct Frame {
  FrameKind kind = FrameKind::kValue;
  uint8_t phase = 0;
  uint16_t aux = 0;     // string: \u digits read, or UTF-8 continuation bytes still due
  int32_t node = 0;     // the GrammarNode; -1 for an object key in json_object mode (any string)
  uint32_t count = 0;   // array items, string code points, or the digits of the number's current part
  int32_t index = 0;    // object: key being matched; literal: the literal; string: next UTF-8 byte range / \u flag
  uint32_t pos = 0;     // bytes of that key or literal matched; number: the exponent's value
  uint32_t unused = 0;  // explicit padding, always zero (frames are hashed as bytes)
  uint64_t seen = 0;    // object: bit i set once keys[i] was written
  auto operator<=>(const Frame&) const = default;
};
static_assert(sizeof(Frame) == 32);

// One stack, bottom first; empty = a complete top-level value.
using Stack = std::vector<Frame>;
// Canonical: sorted, no duplicates.
using State = std::vector<Stack>;

inline constexpr int32_t kEmptyStack = -1;

// Persistent stacks: node i's frame sits on top of stack `parent`.
class StackArena {
 public:
  struct Node {
    Frame frame;
    int32_t parent;
  };
  int32_t Push(const Frame& frame, int32_t parent) {
    nodes_.push_back(Node{frame, parent});
    return static_cast<int32_t>(nodes_.size() - 1);
  }
  const Node& operator[](int32_t i) const { return nodes_[i]; }
  size_t size() const { return nodes_.size(); }
  void Truncate(size_t n) { nodes_.resize(n); }
  void Clear() { nodes_.clear(); }

  int32_t Load(const Stack& stack);
  Stack Materialize(int32_t top) const;

 private:
  std::vector<Node> nodes_;
};

// Immutable; thread-safe. Borrows the grammar.
class Pda {
 public:
  explicit Pda(const CompiledGrammar* grammar);

  State Initial() const;
  // Appends to `out` what `stack` becomes after `byte` (nothing: rejected); kEmptyStack is a complete value.
  void Step(StackArena& arena, int32_t stack, uint8_t byte, std::vector<int32_t>* out) const;
  // Whether the output may end here: the top-level value is complete.
  bool CanEnd(const StackArena& arena, int32_t stack) const;
  bool CanEnd(const State& state) const;
  // The state after `bytes`; empty when they are rejected.
  State Advance(const State& state, std::string_view bytes) const;
  // A state with the same mask as `state` for tokens of at most `max_token_bytes` bytes, in which a bounded
  // string on top counts its code points only as far as the mask can tell them apart: far from both of its
  // bounds, every count gives the same mask, so a long string's masks are cached once instead of per position.
  State MaskEquivalent(const State& state, int max_token_bytes) const;
  // The state as bytes, the mask cache's key.
  static std::string Key(const State& state);
  // The value on top of `parent` is complete: the stack with the parent moved past it.
  int32_t Finish(StackArena& arena, int32_t parent) const;

 private:
  void StartValue(StackArena& arena, int32_t parent, int32_t leaf, uint8_t byte, std::vector<int32_t>* out) const;
  void Literal(StackArena& arena, int32_t parent, int32_t node, int32_t index, uint32_t pos, uint8_t byte,
               std::vector<int32_t>* out) const;
  void StepObject(StackArena& arena, int32_t stack, uint8_t byte, std::vector<int32_t>* out) const;
  void StepArray(StackArena& arena, int32_t stack, uint8_t byte, std::vector<int32_t>* out) const;
  void StepString(StackArena& arena, int32_t stack, uint8_t byte, std::vector<int32_t>* out) const;
  void StepNumber(StackArena& arena, int32_t stack, uint8_t byte, std::vector<int32_t>* out) const;

  const CompiledGrammar* grammar_;
  std::vector<std::vector<int32_t>> leaves_;  // per node: the non-anyOf nodes it stands for
  std::vector<uint64_t> all_keys_;            // per object node: a bit per key
};

}  // namespace gemma::structured
