#include "engine/block_manager.h"

#include <algorithm>
#include <cstring>

namespace gemma {
namespace {

uint64_t Mix(uint64_t h, uint64_t v) {
  // splitmix64's finalizer over (h, v): cheap, and every input bit reaches every output bit.
  uint64_t z = h ^ (v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

BlockManager::BlockManager(int num_blocks, int block_size, bool prefix_cache)
    : num_blocks_(num_blocks), block_size_(block_size), prefix_cache_(prefix_cache), blocks_(num_blocks) {
  free_.reserve(num_blocks);
  for (int i = num_blocks - 1; i >= 0; --i) free_.push_back(i);
}

uint64_t BlockManager::ChainHash(uint64_t parent, std::span<const int32_t> tokens) {
  uint64_t h = Mix(parent, tokens.size());
  for (int32_t t : tokens) h = Mix(h, static_cast<uint32_t>(t));
  return h;
}

int32_t BlockManager::Take() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else {
    b = evictable_.front();
    evictable_.pop_front();
    Unname(b);
  }
  blocks_[b].refs = 1;
  return b;
}

void BlockManager::Unname(int32_t b) {
  Block& block = blocks_[b];
  if (!block.named) return;
  auto it = by_hash_.find(block.hash);
  if (it != by_hash_.end() && it->second == b) {
    by_hash_.erase(it);
    ++names_version_;
  }
  block.named = false;
  block.tokens.clear();
}

void BlockManager::Hold(int32_t b) {
  Block& block = blocks_[b];
  if (block.refs++ == 0) evictable_.erase(block.lru);  // only named blocks are cached while held by nobody
}

void BlockManager::Release(int32_t b) {
  Block& block = blocks_[b];
  if (--block.refs > 0) return;
  if (block.named) {
    block.lru = evictable_.insert(evictable_.end(), b);
  } else {
    free_.push_back(b);
  }
}

bool BlockManager::EnsureCapacity(std::vector<int32_t>& table, int64_t positions) {
  const int need = BlocksFor(positions) - static_cast<int>(table.size());
  if (need <= 0) return true;
  if (need > free_blocks()) return false;
  for (int i = 0; i < need; ++i) table.push_back(Take());
  return true;
}

void BlockManager::Free(std::vector<int32_t>& table) {
  // Released last block first: a sequence's tail is the least likely to be shared, so it is evicted first.
  for (auto it = table.rbegin(); it != table.rend(); ++it) Release(*it);
  table.clear();
}

int64_t BlockManager::MatchPrefix(std::span<const int32_t> tokens, int64_t limit, uint64_t salt,
                                  std::vector<int32_t>& table, BlockChain& chain) {
  chain = {0, salt};
  if (!prefix_cache_ || !table.empty()) return 0;
  limit = std::min<int64_t>(limit, static_cast<int64_t>(tokens.size()));
  const std::vector<uint64_t> hashes = PrefixHashes(tokens, limit, block_size_, salt);
  for (size_t i = 0; i < hashes.size(); ++i) {
    const auto block_tokens = tokens.subspan(i * block_size_, block_size_);
    const uint64_t h = hashes[i];
    auto it = by_hash_.find(h);
    if (it == by_hash_.end()) break;
    const Block& b = blocks_[it->second];
    if (b.parent != chain.last_hash || !std::equal(b.tokens.begin(), b.tokens.end(), block_tokens.begin())) break;
    Hold(it->second);
    table.push_back(it->second);
    chain = {chain.hashed_blocks + 1, h};
  }
  return static_cast<int64_t>(table.size()) * block_size_;
}

void BlockManager::Register(std::span<const int32_t> tokens, int64_t computed, uint64_t salt,
                            std::span<const int32_t> table, BlockChain& chain) {
  if (!prefix_cache_) return;
  if (chain.hashed_blocks == 0) chain.last_hash = salt;
  computed = std::min<int64_t>(computed, static_cast<int64_t>(tokens.size()));
  const int64_t full = std::min<int64_t>(computed / block_size_, static_cast<int64_t>(table.size()));
  for (int64_t i = chain.hashed_blocks; i < full; ++i) {
    const auto block_tokens = tokens.subspan(i * block_size_, block_size_);
    const uint64_t h = ChainHash(chain.last_hash, block_tokens);
    Block& b = blocks_[table[i]];
    if (!b.named && !by_hash_.contains(h)) {
      b.named = true;
      b.hash = h;
      b.parent = chain.last_hash;
      b.tokens.assign(block_tokens.begin(), block_tokens.end());
      by_hash_.emplace(h, table[i]);
      ++names_version_;
    }
    chain = {static_cast<int32_t>(i + 1), h};
  }
}

std::vector<uint64_t> BlockManager::PrefixHashes(std::span<const int32_t> tokens, int64_t limit, int block_size,
                                                 uint64_t salt) {
  std::vector<uint64_t> chain;
  if (block_size <= 0) return chain;
  limit = std::min<int64_t>(limit, static_cast<int64_t>(tokens.size()));
  uint64_t h = salt;
  for (int64_t i = 0; i + block_size <= limit; i += block_size) {
    h = ChainHash(h, tokens.subspan(i, block_size));
    chain.push_back(h);
  }
  return chain;
}

std::vector<uint64_t> BlockManager::Names() const {
  std::vector<uint64_t> names;
  names.reserve(by_hash_.size());
  for (const auto& [hash, block] : by_hash_) names.push_back(hash);
  return names;
}

std::vector<int32_t> BlockManager::Fork(std::span<const int32_t> table) {
  for (int32_t b : table) Hold(b);
  return std::vector<int32_t>(table.begin(), table.end());
}

std::optional<std::pair<int32_t, int32_t>> BlockManager::PrepareWrite(std::vector<int32_t>& table, int64_t position,
                                                                      bool* ok) {
  *ok = true;
  const int64_t index = position / block_size_;
  if (index >= static_cast<int64_t>(table.size())) return std::nullopt;
  const int32_t src = table[index];
  if (blocks_[src].refs <= 1) {
    // Written in place: a name it had no longer describes what it will hold.
    Unname(src);
    return std::nullopt;
  }
  if (free_blocks() == 0) {
    *ok = false;
    return std::nullopt;
  }
  const int32_t dst = Take();
  Release(src);
  table[index] = dst;
  return std::make_pair(src, dst);
}

}  // namespace gemma
