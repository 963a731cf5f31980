#include "structured/grammar.h"

#include <algorithm>

#include "engine/status_macros.h"
#include "structured/schema_compiler.h"
#include "structured/string_index.h"

namespace gemma::structured {
namespace {

constexpr size_t kCacheBytes = size_t{64} << 20;

}  // namespace

absl::StatusOr<std::shared_ptr<Grammar>> Grammar::FromJsonSchema(const nlohmann::json& schema,
                                                                  std::shared_ptr<const Vocabulary> vocabulary,
                                                                  std::vector<int32_t> end_ids) {
  ASSIGN_OR_RETURN(CompiledGrammar compiled, CompileJsonSchema(schema));
  return std::shared_ptr<Grammar>(new Grammar(std::move(compiled), std::move(vocabulary), std::move(end_ids)));
}

std::shared_ptr<Grammar> Grammar::AnyJsonObject(std::shared_ptr<const Vocabulary> vocabulary,
                                                std::vector<int32_t> end_ids) {
  return std::shared_ptr<Grammar>(new Grammar(CompileAnyJsonObject(), std::move(vocabulary), std::move(end_ids)));
}

Grammar::Grammar(CompiledGrammar compiled, std::shared_ptr<const Vocabulary> vocabulary, std::vector<int32_t> end_ids)
    : compiled_(std::move(compiled)),
      pda_(&compiled_),
      vocabulary_(std::move(vocabulary)),
      end_ids_(std::move(end_ids)),
      no_tokens_((vocabulary_->size() + 31) / 32, 0),
      cache_capacity_(std::max<size_t>(64, kCacheBytes / std::max<size_t>(1, no_tokens_.size() * 4))) {}

bool Grammar::IsEndId(int32_t id) const { return std::find(end_ids_.begin(), end_ids_.end(), id) != end_ids_.end(); }

size_t Grammar::cache_size() const {
  absl::MutexLock lock(&mu_);
  return cache_.size();
}

std::shared_ptr<const TokenBitmask> Grammar::Mask(const State& exact) const {
  const State state = pda_.MaskEquivalent(exact, vocabulary_->max_token_bytes());
  std::string key = Pda::Key(state);
  {
    absl::MutexLock lock(&mu_);
    if (auto it = cache_.find(key); it != cache_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      return it->second->second;
    }
  }
  // Computed outside the lock: two sequences reaching a new state at once may both compute it.
  auto mask = std::make_shared<const TokenBitmask>(ComputeMask(state));
  absl::MutexLock lock(&mu_);
  if (auto it = cache_.find(key); it != cache_.end()) return it->second->second;
  lru_.emplace_front(key, mask);
  cache_.emplace(std::move(key), lru_.begin());
  if (cache_.size() > cache_capacity_) {
    cache_.erase(lru_.back().first);
    lru_.pop_back();
  }
  return mask;
}

namespace {

// Depth-first over trie nodes [begin, end), all below depth `depth`, whose path so far left the stacks `sets[depth]`;
// a prefix that no stack accepts skips its whole subtree. Stacks live in `arena`, truncated back to the parent's
// mark at each node.
void Walk(const Pda& pda, const Vocabulary& vocab, int32_t begin, int32_t end, int depth, StackArena& arena,
          std::vector<std::vector<int32_t>>& sets, std::vector<size_t>& marks, TokenBitmask& mask) {
  const auto& trie = vocab.trie();
  const auto& tokens = vocab.trie_tokens();
  marks[depth] = arena.size();
  for (int32_t i = begin; i < end;) {
    const Vocabulary::TrieNode& node = trie[i];
    const int d = node.depth;
    arena.Truncate(marks[d - 1]);
    std::vector<int32_t>& set = sets[d];
    set.clear();
    for (int32_t s : sets[d - 1]) pda.Step(arena, s, node.byte, &set);
    if (set.empty()) {
      i = node.subtree_end;
      continue;
    }
    marks[d] = arena.size();
    for (int32_t t = node.token_begin; t < node.token_end; ++t) AllowToken(mask, tokens[t]);
    ++i;
  }
}

void Or(TokenBitmask& mask, const TokenBitmask& other) {
  for (size_t w = 0; w < mask.size(); ++w) mask[w] |= other[w];
}

}  // namespace

// A stack inside a string, between characters, takes the string index's shortcut: the tokens that stay inside
// the string by how many code points they add, then a walk below each closing quote with the string finished.
// Every other stack walks the whole trie.
TokenBitmask Grammar::ComputeMask(const State& state) const {
  TokenBitmask mask = no_tokens_;
  const Vocabulary& vocab = *vocabulary_;
  const auto& trie = vocab.trie();
  const int depths = vocab.max_token_bytes() + 1;
  StackArena arena;
  std::vector<std::vector<int32_t>> sets(depths);
  std::vector<size_t> marks(depths);
  std::vector<int32_t> general;
  for (const Stack& s : state) {
    const int32_t top = arena.Load(s);
    const Frame* f = s.empty() ? nullptr : &s.back();
    if (f == nullptr || f->kind != FrameKind::kString || f->phase != 0 /* between characters */) {
      general.push_back(top);
      continue;
    }
    const StringIndex& index = vocab.string_index();
    uint32_t min = 0, max = kUnbounded;
    if (f->node >= 0) {
      min = compiled_.nodes[f->node].min_length;
      max = compiled_.nodes[f->node].max_length;
    }
    // A count on an unbounded string is saturated at the minimum; on a bounded one it is exact.
    const uint32_t room = max == kUnbounded ? kUnbounded : max - f->count;
    Or(mask, index.within[std::min<size_t>(room, index.within.size() - 1)]);
    for (const StringIndex::Close& close : index.closes) {
      if (close.code_points > room || f->count + close.code_points < min) continue;
      const size_t mark = arena.size();
      const int32_t closed = pda_.Finish(arena, arena[top].parent);
      const Vocabulary::TrieNode& node = trie[close.node];
      for (int32_t t = node.token_begin; t < node.token_end; ++t) AllowToken(mask, vocab.trie_tokens()[t]);
      if (closed != kEmptyStack) {  // nothing follows a complete top-level value
        sets[node.depth] = {closed};
        Walk(pda_, vocab, close.node + 1, node.subtree_end, node.depth, arena, sets, marks, mask);
      }
      arena.Truncate(mark);
    }
  }
  if (!general.empty()) {
    sets[0] = general;
    Walk(pda_, vocab, 0, static_cast<int32_t>(trie.size()), 0, arena, sets, marks, mask);
  }
  const bool can_end = pda_.CanEnd(state);
  for (int32_t id : end_ids_) {
    if (id < 0 || id >= vocabulary_->size()) continue;
    if (can_end) {
      AllowToken(mask, id);
    } else {
      mask[id / 32] &= ~(1u << (id % 32));
    }
  }
  return mask;
}

}  // namespace gemma::structured
