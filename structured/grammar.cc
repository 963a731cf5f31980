#include "structured/grammar.h"

#include <algorithm>

#include "engine/status_macros.h"
#include "structured/schema_compiler.h"

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

// Depth-first over the vocabulary trie, carrying the set of stacks reached by each prefix; a prefix that no stack
// accepts skips its whole subtree. Stacks live in one arena, truncated back to the parent's mark at each node.
TokenBitmask Grammar::ComputeMask(const State& state) const {
  TokenBitmask mask = no_tokens_;
  const auto& trie = vocabulary_->trie();
  const auto& tokens = vocabulary_->trie_tokens();
  const int depths = vocabulary_->max_token_bytes() + 1;
  StackArena arena;
  std::vector<std::vector<int32_t>> sets(depths);
  std::vector<size_t> marks(depths);
  for (const Stack& s : state) sets[0].push_back(arena.Load(s));
  marks[0] = arena.size();
  for (size_t i = 0; i < trie.size();) {
    const Vocabulary::TrieNode& node = trie[i];
    const int d = node.depth;
    arena.Truncate(marks[d - 1]);
    std::vector<int32_t>& set = sets[d];
    set.clear();
    for (int32_t s : sets[d - 1]) pda_.Step(arena, s, node.byte, &set);
    if (set.empty()) {
      i = node.subtree_end;
      continue;
    }
    marks[d] = arena.size();
    for (int32_t t = node.token_begin; t < node.token_end; ++t) AllowToken(mask, tokens[t]);
    ++i;
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
