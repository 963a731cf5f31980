// KV-cache blocks of one worker group: who holds which block, shared prefixes, and copy-on-write.
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/step_protocol.h"

namespace gemma {

// Where a sequence's chain of full-block hashes stands, for registering its blocks in the prefix cache.
struct BlockChain {
  int32_t hashed_blocks = 0;  // the first blocks of the table already named by a hash
  uint64_t last_hash = 0;     // the hash of the last of them (the chain's root when none)
};

// One sequence's blocks. `global` covers every position from 0 (block i: positions [i * block_size, (i + 1) *
// block_size)). With a KvWindow, `local` holds the local layers' blocks of the block indices
// [local_begin, local_begin + local.size() / local_groups), local_groups per index (index-major): indices before
// local_begin have left every local layer's window and were given back.
struct BlockTable {
  std::vector<int32_t> global;
  std::vector<int32_t> local;
  int32_t local_begin = 0;
  bool empty() const { return global.empty() && local.empty(); }
};

// A full block is named by a hash chained over (parent hash, its tokens); the root of the chain is a salt that
// separates contexts which must never share KV (another adapter, say). Blocks are reference-counted: sequences
// that share a prefix share its blocks, and a forked sequence shares all of its parent's. A block that no
// sequence holds but that has a name stays cached until its space is needed; the least recently freed goes first.
// With a KvWindow, global and local blocks come from the one pool (vLLM's hybrid KV-cache manager in spirit): a
// sequence holds global blocks for all its positions and local ones only for those a query may still see, so the
// local blocks of positions that left the window return to the pool (Slide) while the global ones stay. A local
// block is named by its global block's name and its group, so a cached prefix is taken only as far as the local
// blocks its window needs are still cached too. Not thread-safe: owned by its group's scheduler.
class BlockManager {
 public:
  BlockManager(int num_blocks, int block_size, bool prefix_cache = false, KvWindow window = {});

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
  const KvWindow& window() const { return window_; }
  // The most blocks a sequence of `positions` positions holds at once, computed in runs of at most `chunk`.
  int64_t MostBlocksHeld(int64_t positions, int chunk) const;
  // Local blocks given back because their positions left the window (and no other sequence held them), since the
  // start.
  int64_t window_released_blocks() const { return window_released_; }

  // Grows `table` to cover `positions` with fresh blocks (local ones from local_begin on); false (and `table`
  // unchanged) when too few are free.
  bool EnsureCapacity(BlockTable& table, int64_t positions);
  // Gives back the local blocks that no query at `next_position` or later sees (before a row starting there), but
  // for the one block index just before the window, kept so that a fork can start up to a block behind.
  void Slide(BlockTable& table, int64_t next_position);
  // Drops this table's hold on each of its blocks and clears it.
  void Free(BlockTable& table);

  // Prefix cache. Fills the empty `table` with the cached blocks that hold the longest run of full blocks of
  // tokens[0, limit) whose local blocks (those the next position's window reaches) are cached too, taking a hold on
  // each, and sets `chain` past them; returns the positions they cover.
  int64_t MatchPrefix(std::span<const int32_t> tokens, int64_t limit, uint64_t salt, BlockTable& table,
                      BlockChain& chain);
  // Names the full blocks of `table` (global and held local ones) that hold tokens[0, computed) and are not named
  // yet. A block whose content another block already holds stays unnamed (the first one serves later matches).
  void Register(std::span<const int32_t> tokens, int64_t computed, uint64_t salt, const BlockTable& table,
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
  BlockTable Fork(const BlockTable& table);
  // Before writing position `position` of `table`: each block of it (global, and local per group) held by others
  // is replaced by a fresh one, and the (source, destination) pairs whose content must be copied first are
  // returned; empty: nothing to copy. False in `ok` when too few blocks are free (the table is unchanged).
  std::vector<std::pair<int32_t, int32_t>> PrepareWrite(BlockTable& table, int64_t position, bool* ok);

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
  // Drops one hold; true when that was the last (the block is free or cached).
  bool Release(int32_t block);
  void Unname(int32_t block);
  // Names `block` `hash` unless it or another block has that name already.
  void Name(int32_t block, uint64_t hash, uint64_t parent, std::span<const int32_t> tokens);
  // The cached block named `hash` after `parent` holding `tokens`; -1 if none.
  int32_t Find(uint64_t hash, uint64_t parent, std::span<const int32_t> tokens) const;
  // The name of local group `group`'s block at the block index whose global block is named `hash`.
  static uint64_t LocalName(uint64_t hash, int group);
  // Block indices a table holds local blocks for, and the first index a query at `position` sees.
  int64_t LocalEnd(const BlockTable& table) const;
  int64_t FirstInWindow(int64_t position) const;

  int num_blocks_, block_size_;
  bool prefix_cache_;
  KvWindow window_;
  int64_t window_released_ = 0;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_;         // unnamed, held by nobody
  std::list<int32_t> evictable_;      // named, held by nobody; least recently freed first
  absl::flat_hash_map<uint64_t, int32_t> by_hash_;
  uint64_t names_version_ = 0;
};

}  // namespace gemma
