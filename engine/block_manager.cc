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

BlockManager::BlockManager(int num_blocks, int block_size, bool prefix_cache, KvWindow window)
    : num_blocks_(num_blocks),
      block_size_(block_size),
      prefix_cache_(prefix_cache),
      window_(window.enabled() ? window : KvWindow{}),
      blocks_(num_blocks) {
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

bool BlockManager::Release(int32_t b) {
  Block& block = blocks_[b];
  if (--block.refs > 0) return false;
  if (block.named) {
    block.lru = evictable_.insert(evictable_.end(), b);
  } else {
    free_.push_back(b);
  }
  return true;
}

uint64_t BlockManager::LocalName(uint64_t hash, int group) { return Mix(hash, 0x6c6f63616cull + group); }

int64_t BlockManager::LocalEnd(const BlockTable& table) const {
  if (!window_.enabled()) return 0;
  return table.local_begin + static_cast<int64_t>(table.local.size()) / window_.local_groups;
}

int64_t BlockManager::FirstInWindow(int64_t position) const {
  return std::max<int64_t>(0, position - window_.window + 1) / block_size_;
}

int64_t BlockManager::MostBlocksHeld(int64_t positions, int chunk) const {
  return BlocksFor(positions) + window_.local_groups * window_.MostLocalIndices(positions, chunk, block_size_);
}

bool BlockManager::EnsureCapacity(BlockTable& table, int64_t positions) {
  const int64_t n = BlocksFor(positions);
  const int64_t global = std::max<int64_t>(0, n - static_cast<int64_t>(table.global.size()));
  const int64_t local = window_.enabled() ? std::max<int64_t>(0, n - LocalEnd(table)) : 0;
  if (global + local * window_.local_groups > free_blocks()) return false;
  for (int64_t i = 0; i < global; ++i) table.global.push_back(Take());
  for (int64_t i = 0; i < local * window_.local_groups; ++i) table.local.push_back(Take());
  return true;
}

void BlockManager::Slide(BlockTable& table, int64_t next_position) {
  if (!window_.enabled()) return;
  // One block index before the window stays: a fork starts at its parent's last full block, at most a block
  // behind the parent, and its window then reaches one index further back (Scheduler::Fork).
  const int64_t first = std::max<int64_t>(0, FirstInWindow(next_position) - 1);
  const int64_t drop = std::clamp<int64_t>(first - table.local_begin, 0, LocalEnd(table) - table.local_begin);
  const auto end = table.local.begin() + drop * window_.local_groups;
  // Oldest first: evicted first. Only blocks no other sequence holds count as given back.
  for (auto it = table.local.begin(); it != end; ++it) window_released_ += Release(*it) ? 1 : 0;
  table.local.erase(table.local.begin(), end);
  table.local_begin += static_cast<int32_t>(drop);
  if (table.local.empty()) table.local_begin = static_cast<int32_t>(std::max<int64_t>(table.local_begin, first));
}

void BlockManager::Free(BlockTable& table) {
  // Released last block first: a sequence's tail is the least likely to be shared, so it is evicted first.
  for (auto it = table.local.rbegin(); it != table.local.rend(); ++it) Release(*it);
  for (auto it = table.global.rbegin(); it != table.global.rend(); ++it) Release(*it);
  table = BlockTable{};
}

void BlockManager::Name(int32_t b, uint64_t hash, uint64_t parent, std::span<const int32_t> tokens) {
  Block& block = blocks_[b];
  if (block.named || by_hash_.contains(hash)) return;
  block.named = true;
  block.hash = hash;
  block.parent = parent;
  block.tokens.assign(tokens.begin(), tokens.end());
  by_hash_.emplace(hash, b);
  ++names_version_;
}

int32_t BlockManager::Find(uint64_t hash, uint64_t parent, std::span<const int32_t> tokens) const {
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return -1;
  const Block& b = blocks_[it->second];
  if (b.parent != parent || !std::equal(b.tokens.begin(), b.tokens.end(), tokens.begin(), tokens.end())) return -1;
  return it->second;
}

int64_t BlockManager::MatchPrefix(std::span<const int32_t> tokens, int64_t limit, uint64_t salt, BlockTable& table,
                                  BlockChain& chain) {
  chain = {0, salt};
  if (!prefix_cache_ || !table.empty()) return 0;
  limit = std::min<int64_t>(limit, static_cast<int64_t>(tokens.size()));
  const std::vector<uint64_t> hashes = PrefixHashes(tokens, limit, block_size_, salt);
  auto block_tokens = [&](int64_t i) { return tokens.subspan(i * block_size_, block_size_); };
  auto parent = [&](int64_t i) { return i == 0 ? salt : hashes[i - 1]; };
  std::vector<int32_t> global;
  for (size_t i = 0; i < hashes.size(); ++i) {
    const int32_t b = Find(hashes[i], parent(i), block_tokens(i));
    if (b < 0) break;
    global.push_back(b);
  }
  // With windows, the run ends where the next position's window reaches a local block that is no longer cached.
  std::vector<int32_t> local;
  int64_t m = static_cast<int64_t>(global.size()), first = 0;
  for (; window_.enabled() && m > 0; --m) {
    first = FirstInWindow(m * block_size_);
    local.clear();
    for (int64_t i = first; i < m; ++i) {
      for (int g = 0; g < window_.local_groups; ++g) {
        const int32_t b = Find(LocalName(hashes[i], g), parent(i), block_tokens(i));
        if (b < 0) break;
        local.push_back(b);
      }
    }
    if (static_cast<int64_t>(local.size()) == (m - first) * window_.local_groups) break;
  }
  if (m == 0) return 0;
  global.resize(m);
  for (int32_t b : global) Hold(b);
  for (int32_t b : local) Hold(b);
  table.global = std::move(global);
  table.local = std::move(local);
  table.local_begin = static_cast<int32_t>(first);
  chain = {static_cast<int32_t>(m), hashes[m - 1]};
  return m * block_size_;
}

void BlockManager::Register(std::span<const int32_t> tokens, int64_t computed, uint64_t salt, const BlockTable& table,
                            BlockChain& chain) {
  if (!prefix_cache_) return;
  if (chain.hashed_blocks == 0) chain.last_hash = salt;
  computed = std::min<int64_t>(computed, static_cast<int64_t>(tokens.size()));
  const int64_t full = std::min<int64_t>(computed / block_size_, static_cast<int64_t>(table.global.size()));
  const int64_t local_end = LocalEnd(table);
  for (int64_t i = chain.hashed_blocks; i < full; ++i) {
    const auto block_tokens = tokens.subspan(i * block_size_, block_size_);
    const uint64_t h = ChainHash(chain.last_hash, block_tokens);
    Name(table.global[i], h, chain.last_hash, block_tokens);
    if (i >= table.local_begin && i < local_end) {
      for (int g = 0; g < window_.local_groups; ++g) {
        Name(table.local[(i - table.local_begin) * window_.local_groups + g], LocalName(h, g), chain.last_hash,
             block_tokens);
      }
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

BlockTable BlockManager::Fork(const BlockTable& table) {
  for (int32_t b : table.global) Hold(b);
  for (int32_t b : table.local) Hold(b);
  return table;
}

std::vector<std::pair<int32_t, int32_t>> BlockManager::PrepareWrite(BlockTable& table, int64_t position, bool* ok) {
  *ok = true;
  const int64_t index = position / block_size_;
  std::vector<int32_t*> written;  // the entries of `table` that hold `position`
  if (index < static_cast<int64_t>(table.global.size())) written.push_back(&table.global[index]);
  if (index >= table.local_begin && index < LocalEnd(table)) {
    for (int g = 0; g < window_.local_groups; ++g) {
      written.push_back(&table.local[(index - table.local_begin) * window_.local_groups + g]);
    }
  }
  const int shared = static_cast<int>(
      std::count_if(written.begin(), written.end(), [&](const int32_t* b) { return blocks_[*b].refs > 1; }));
  if (shared > free_blocks()) {
    *ok = false;
    return {};
  }
  std::vector<std::pair<int32_t, int32_t>> copies;
  for (int32_t* entry : written) {
    const int32_t src = *entry;
    if (blocks_[src].refs <= 1) {
      // Written in place: a name it had no longer describes what it will hold.
      Unname(src);
      continue;
    }
    const int32_t dst = Take();
    Release(src);
    *entry = dst;
    copies.emplace_back(src, dst);
  }
  return copies;
}

}  // namespace gemma
