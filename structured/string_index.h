// What each token does when it starts inside a JSON string, between characters: computed once per vocabulary.
// Inside a string almost every token is allowed, and walking the whole trie for that costs about 10 ms on Gemma's
// 262k vocabulary; with this index a string's mask is an OR of one precomputed mask and short walks below the
// tokens' closing quotes. Internal to the library.
#pragma once

#include <cstdint>
#include <vector>

#include "structured/token_bitmask.h"

namespace gemma::structured {

class Vocabulary;

// Immutable; thread-safe.
struct StringIndex {
  // within[k]: the tokens whose bytes all stay inside the string (valid string content, possibly ending inside
  // a character or an escape) and start at most k code points.
  std::vector<TokenBitmask> within;
  // A trie node whose byte is the string's closing quote, reached after `code_points` code points.
  struct Close {
    int32_t node;
    uint32_t code_points;
  };
  std::vector<Close> closes;  // in trie order
};

StringIndex BuildStringIndex(const Vocabulary& vocabulary);

}  // namespace gemma::structured
