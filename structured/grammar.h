// A compiled response format (OpenAI's response_format): JSON Schema or any JSON object, over one vocabulary.
//
// Output is compact JSON: no whitespace anywhere, so masks stay small and a schema that bounds its strings and
// arrays always terminates. See pda.h for the exact byte grammar (number and string bounds).
//
// Supported JSON Schema subset: type (object, array, string, number, integer, boolean, null, or a list of them),
// properties, required, additionalProperties (false; absent or true is treated as false: only the listed
// properties are generated, so the output still validates), enum and const (any JSON values, matched as their
// compact serialisation), items, minItems, maxItems, minLength and maxLength (code points), anyOf, oneOf when no
// value can match two of its branches (first bytes differ, or disjoint literal sets), and $ref to #, #/$defs/NAME
// or #/definitions/NAME (recursion allowed). Objects have at most 64 properties, written in any order, each at
// most once, every required one before '}'. Annotations (title, description, $schema, $id, default, examples,
// $comment, deprecated, readOnly, writeOnly) are ignored; any other keyword is rejected.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"
#include "structured/grammar_nodes.h"
#include "structured/pda.h"
#include "structured/token_bitmask.h"
#include "structured/vocabulary.h"

namespace gemma::structured {

// Immutable except for the mask cache, which a mutex guards; thread-safe. Shared by every sequence that uses the
// same response format.
class Grammar {
 public:
  // `end_ids`: tokens that end the output (<eos>, and <end_of_turn> for chat); allowed exactly when the value is
  // complete. Give at least one, or a complete value leaves no token allowed. InvalidArgument for a schema
  // outside the supported subset or malformed, naming the keyword and its JSON pointer (e.g.
  // "response_format.json_schema.schema/properties/name: keyword 'pattern' is not supported; supported: ...").
  static absl::StatusOr<std::shared_ptr<Grammar>> FromJsonSchema(const nlohmann::json& schema,
                                                                 std::shared_ptr<const Vocabulary> vocabulary,
                                                                 std::vector<int32_t> end_ids);
  // Any JSON object (OpenAI's json_object mode), any values inside.
  static std::shared_ptr<Grammar> AnyJsonObject(std::shared_ptr<const Vocabulary> vocabulary,
                                                std::vector<int32_t> end_ids);

  Grammar(const Grammar&) = delete;
  Grammar& operator=(const Grammar&) = delete;

  const Vocabulary& vocabulary() const { return *vocabulary_; }

  // For Matcher.
  const Pda& pda() const { return pda_; }
  bool IsEndId(int32_t id) const;
  // The allowed tokens in a canonical state: from the cache, else computed and cached. The pointer stays valid
  // after eviction.
  std::shared_ptr<const TokenBitmask> Mask(const State& state) const;
  // The same, never cached (for benchmarks and tests): a depth-first walk of the vocabulary's byte trie carrying
  // the state, pruning a subtree at its first rejected byte; a stack inside a string uses the vocabulary's
  // StringIndex instead. On Gemma's 262k vocabulary: about 10 us inside a string, after '{' or in a number.
  TokenBitmask ComputeMask(const State& state) const;
  const TokenBitmask& no_tokens() const { return no_tokens_; }

  // The cache holds at most this many masks: 64 MiB of masks, so 2,048 for Gemma's 262,144-token vocabulary
  // (32 KiB each) and at least 64.
  size_t cache_capacity() const { return cache_capacity_; }
  size_t cache_size() const;

 private:
  Grammar(CompiledGrammar compiled, std::shared_ptr<const Vocabulary> vocabulary, std::vector<int32_t> end_ids);

  const CompiledGrammar compiled_;
  const Pda pda_;  // borrows compiled_
  const std::shared_ptr<const Vocabulary> vocabulary_;
  const std::vector<int32_t> end_ids_;
  const TokenBitmask no_tokens_;
  const size_t cache_capacity_;

  // LRU: most recently used at the front; the map points into the list.
  using Entry = std::pair<std::string, std::shared_ptr<const TokenBitmask>>;
  mutable absl::Mutex mu_;
  mutable std::list<Entry> lru_ ABSL_GUARDED_BY(mu_);
  mutable absl::flat_hash_map<std::string, std::list<Entry>::iterator> cache_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gemma::structured
