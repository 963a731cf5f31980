// KV-cache blocks of one worker group: who holds which block, shared prefixes, and copy-on-write.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace gemma {

// Where a sequence's chain of full-block hashes stands, for registering its blocks in the prefix cache.
struct BlockChain {
  int32_t hashed_blocks = 0;  // the first blocks of the table already named by a hash
  uint64_t last_hash = 0;     // the hash of the last of them (the chain's root when none)
};

// A full block is named by a hash chained over (parent hash, its tokens); the root of the chain is a salt that
// separates contexts which must never share KV (another adapter, say). Blocks are reference-counted: sequences
// that share a prefix share its blocks, and a forked sequence shares all of its parent's. A block that no
// sequence holds but that has a name stays cached until its space is needed; the least recently freed goes first.
// Not thread-safe: owned by its group's scheduler.
class BlockManager {
 public:
  BlockManager(int num_blocks, int block_size, bool prefix_cache = false);

  int block_size() const { return block_size_; }
  int num_blocks() const { return num_blocks_; }
  // Blocks a sequence can still get: never used, or cached and held by nobody (evicted on demand).
  int free_blocks() const { return static_cast<int>(free_.size() + evictable_.size()); }
  // Blocks held by at least one sequence.
  int used_blocks() const { return num_blocks_ - free_blocks(); }
  // Blocks named in the prefix cache, held or not.
  int cached_blocks() const { return static_cast<int>(by_hash_.size()); }
  bool prefix_cache() const { return prefix_cache_; }
  int ref_count(int32_t block) const { return blocks_[block].refs; }
  int BlocksFor(int64_t positions) const { return static_cast<int>((positions + block_size_ - 1) / block_size_); }

  // Grows `table` to cover `positions` with fresh blocks; false (and `table` unchanged) when too few are free.
  bool EnsureCapacity(std::vector<int32_t>& table, int64_t positions);
  // Drops this table's hold on each of its blocks and clears it.
  void Free(std::vector<int32_t>& table);

  // Prefix cache. Appends to the empty `table` the cached blocks that hold the longest run of full blocks of
  // tokens[0, limit), taking a hold on each, and sets `chain` past them; returns the positions they cover.
  int64_t MatchPrefix(std::span<const int32_t> tokens, int64_t limit, uint64_t salt, std::vector<int32_t>& table,
                      BlockChain& chain);
  // Names the full blocks of `table` that hold tokens[0, computed) and are not named yet. A block whose content
  // another block already holds stays unnamed (the first one serves later matches).
  void Register(std::span<const int32_t> tokens, int64_t computed, uint64_t salt, std::span<const int32_t> table,
                BlockChain& chain);
  // The hash naming a full block of `tokens` after `parent` (the salt for the first block).
  static uint64_t ChainHash(uint64_t parent, std::span<const int32_t> tokens);
  // The chain of names of the full blocks of tokens[0, limit), as MatchPrefix looks them up.
  static std::vector<uint64_t> PrefixHashes(std::span<const int32_t> tokens, int64_t limit, int block_size,
                                            uint64_t salt);
  // The names of the cached blocks, and a number that changes whenever they do (for copies kept elsewhere).
  std::vector<uint64_t> Names() const;
  uint64_t names_version() const { return names_version_; }

  // Copy-on-write. Fork: a new table sharing every block of `table`.
  std::vector<int32_t> Fork(std::span<const int32_t> table);
  // Before writing position `position` of `table`: a block held by others is replaced by a fresh one, and the
  // (source, destination) pair whose content must be copied first is returned. nullopt: nothing to copy. False
  // in `ok` when no block is free (the table is unchanged).
  std::optional<std::pair<int32_t, int32_t>> PrepareWrite(std::vector<int32_t>& table, int64_t position, bool* ok);

 private:
  struct Block {
    int refs = 0;
    bool named = false;
    uint64_t hash = 0;
    uint64_t parent = 0;
    std::vector<int32_t> tokens;                // a named block's tokens, to rule out hash collisions
    std::list<int32_t>::iterator lru;           // valid while named and held by nobody
  };
  int32_t Take();             // a free block (never used first, else the least recently freed cached one)
  void Hold(int32_t block);   // one more holder
  void Release(int32_t block);
  void Unname(int32_t block);

  int num_blocks_, block_size_;
  bool prefix_cache_;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_;         // unnamed, held by nobody
  std::list<int32_t> evictable_;      // named, held by nobody; least recently freed first
  absl::flat_hash_map<uint64_t, int32_t> by_hash_;
  uint64_t names_version_ = 0;
};

}  // namespace gemma
