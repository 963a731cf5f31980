#include "structured/string_index.h"

#include <algorithm>

#include "structured/grammar_nodes.h"
#include "structured/pda.h"
#include "structured/vocabulary.h"

namespace gemma::structured {

// The same walk as Grammar::ComputeMask, by the same Pda, over a grammar of one string whose bounds never bite
// (a finite maximum keeps its code-point count exact); no state forks, so each depth holds one stack.
StringIndex BuildStringIndex(const Vocabulary& vocabulary) {
  CompiledGrammar grammar;
  grammar.nodes.push_back(GrammarNode{.kind = NodeKind::kString, .max_length = kUnbounded - 1});
  grammar.root = 0;
  const Pda pda(&grammar);
  const auto& trie = vocabulary.trie();
  const auto& tokens = vocabulary.trie_tokens();
  const int depths = vocabulary.max_token_bytes() + 1;

  StringIndex index;
  std::vector<std::vector<int32_t>> by_code_points(depths + 1);  // token ids by the code points they start
  StackArena arena;
  Frame inside;
  inside.kind = FrameKind::kString;
  std::vector<int32_t> at(depths);  // the stack at each depth
  at[0] = arena.Push(inside, kEmptyStack);
  std::vector<int32_t> next;
  for (size_t i = 0; i < trie.size();) {
    const Vocabulary::TrieNode& node = trie[i];
    const int d = node.depth;
    arena.Truncate(static_cast<size_t>(at[d - 1]) + 1);
    next.clear();
    pda.Step(arena, at[d - 1], node.byte, &next);
    if (next.empty()) {
      i = node.subtree_end;
      continue;
    }
    if (next[0] == kEmptyStack) {  // the closing quote: what follows depends on the string's parent
      index.closes.push_back({static_cast<int32_t>(i), arena[at[d - 1]].frame.count});
      i = node.subtree_end;
      continue;
    }
    at[d] = next[0];
    const uint32_t code_points = arena[at[d]].frame.count;
    for (int32_t t = node.token_begin; t < node.token_end; ++t) by_code_points[code_points].push_back(tokens[t]);
    ++i;
  }
  TokenBitmask cumulative((vocabulary.size() + 31) / 32, 0);
  for (const auto& ids : by_code_points) {
    for (int32_t id : ids) AllowToken(cumulative, id);
    index.within.push_back(cumulative);
  }
  return index;
}

}  // namespace gemma::structured
