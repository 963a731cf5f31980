#include "structured/vocabulary.h"

#include <algorithm>
#include <numeric>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "structured/string_index.h"

namespace gemma::structured {
namespace {

// "<0xNN>" -> the byte NN; nullopt for any other piece.
std::optional<char> BytePiece(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return std::nullopt;
  int value = 0;
  for (char c : piece.substr(3, 2)) {
    const int digit = c >= '0' && c <= '9'   ? c - '0'
                      : c >= 'A' && c <= 'F' ? c - 'A' + 10
                      : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                             : -1;
    if (digit < 0) return std::nullopt;
    value = value * 16 + digit;
  }
  return static_cast<char>(value);
}

}  // namespace

absl::StatusOr<std::shared_ptr<const Vocabulary>> Vocabulary::FromTokenizer(const Tokenizer& tokenizer) {
  using Type = Tokenizer::PieceType;
  const int n = tokenizer.vocab_size();
  std::vector<std::optional<std::string>> bytes(n);
  for (int id = 0; id < n; ++id) {
    const Type type = tokenizer.piece_type(id);
    const std::string piece = tokenizer.IdToPiece(id);
    if (type == Type::kControl || type == Type::kUnknown || type == Type::kUnused) continue;
    if (type == Type::kByte) {
      const std::optional<char> b = BytePiece(piece);
      if (!b) return absl::InvalidArgumentError(absl::StrCat("byte piece ", id, " is not <0xNN>: ", piece));
      bytes[id] = std::string(1, *b);
      continue;
    }
    if (type == Type::kUserDefined && piece.size() >= 2 && piece.front() == '<' && piece.back() == '>') continue;
    bytes[id] = absl::StrReplaceAll(piece, {{"\xE2\x96\x81", " "}});
  }
  return FromTokenBytes(std::move(bytes));
}

std::shared_ptr<const Vocabulary> Vocabulary::FromTokenBytes(std::vector<std::optional<std::string>> bytes) {
  return std::shared_ptr<const Vocabulary>(new Vocabulary(std::move(bytes)));
}

Vocabulary::~Vocabulary() = default;

const StringIndex& Vocabulary::string_index() const {
  absl::call_once(string_index_once_,
                  [this] { string_index_ = std::make_unique<const StringIndex>(BuildStringIndex(*this)); });
  return *string_index_;
}

Vocabulary::Vocabulary(std::vector<std::optional<std::string>> bytes) : bytes_(std::move(bytes)) {
  // Sorted byte strings give the trie in preorder: each token adds the nodes past its common prefix with the
  // previous one, and a node's subtree ends where a later token first leaves its prefix.
  std::vector<int32_t> ids;
  for (int32_t id = 0; id < size(); ++id) {
    if (bytes_[id] && !bytes_[id]->empty()) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
    return *bytes_[a] != *bytes_[b] ? *bytes_[a] < *bytes_[b] : a < b;
  });
  trie_tokens_ = ids;
  std::vector<int32_t> path;  // trie node indices from depth 1 down
  std::string_view previous;
  for (int32_t i = 0; i < static_cast<int32_t>(ids.size()); ++i) {
    const std::string_view s = *bytes_[ids[i]];
    max_token_bytes_ = std::max<int>(max_token_bytes_, s.size());
    size_t common = 0;
    while (common < s.size() && common < previous.size() && s[common] == previous[common]) ++common;
    while (path.size() > common) {
      trie_[path.back()].subtree_end = static_cast<int32_t>(trie_.size());
      path.pop_back();
    }
    for (size_t d = common; d < s.size(); ++d) {
      path.push_back(static_cast<int32_t>(trie_.size()));
      trie_.push_back(TrieNode{static_cast<uint8_t>(s[d]), static_cast<uint16_t>(d + 1), 0, i, i});
    }
    trie_[path.back()].token_end = i + 1;
    previous = s;
  }
  for (int32_t node : path) trie_[node].subtree_end = static_cast<int32_t>(trie_.size());
}

}  // namespace gemma::structured
