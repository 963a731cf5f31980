// Each token id's bytes as the detokenizer emits them, and a byte trie over them for computing masks.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/call_once.h"
#include "absl/status/statusor.h"
#include "tokenizer/tokenizer.h"

namespace gemma::structured {

struct StringIndex;  // string_index.h

// Immutable after creation; thread-safe.
class Vocabulary {
 public:
  // From Gemma's SentencePiece tokenizer: a piece's text with U+2581 '▁' turned into ' ', a byte-fallback piece
  // "<0xNN>" as that one byte. Control, unknown and unused pieces, and user-defined pieces written "<...>"
  // (<start_of_turn>, <mask>, HTML tags...), have no bytes: a grammar never allows them. User-defined runs of
  // "\n", "▁" and "\t" keep their bytes.
  static absl::StatusOr<std::shared_ptr<const Vocabulary>> FromTokenizer(const Tokenizer& tokenizer);
  // For tests: explicit bytes per id; nullopt = special (never allowed).
  static std::shared_ptr<const Vocabulary> FromTokenBytes(std::vector<std::optional<std::string>> bytes);

  int size() const { return static_cast<int>(bytes_.size()); }
  // Null for a special token.
  const std::string* bytes(int32_t id) const { return bytes_[id] ? &*bytes_[id] : nullptr; }

  // The byte trie of every non-special token with at least one byte, in depth-first preorder (children in byte
  // order), so that skipping a rejected prefix's whole subtree is a jump to `subtree_end`.
  struct TrieNode {
    uint8_t byte;         // the byte on the edge into this node
    uint16_t depth;       // 1 for a child of the (implicit) root
    int32_t subtree_end;  // index of the first node after this one's subtree
    int32_t token_begin;  // tokens whose bytes end here: trie_tokens()[token_begin, token_end)
    int32_t token_end;
  };
  const std::vector<TrieNode>& trie() const { return trie_; }
  const std::vector<int32_t>& trie_tokens() const { return trie_tokens_; }
  int max_token_bytes() const { return max_token_bytes_; }
  // Built on first use (about 10 ms for Gemma's vocabulary, 1.6 MiB), then shared by every grammar.
  const StringIndex& string_index() const;

  ~Vocabulary();

 private:
  explicit Vocabulary(std::vector<std::optional<std::string>> bytes);

  std::vector<std::optional<std::string>> bytes_;
  std::vector<TrieNode> trie_;
  std::vector<int32_t> trie_tokens_;
  int max_token_bytes_ = 0;
  mutable absl::once_flag string_index_once_;
  mutable std::unique_ptr<const StringIndex> string_index_;
};

}  // namespace gemma::structured
