#include "engine/block_manager.h"

#include <numeric>

#include "gtest/gtest.h"

namespace gemma {
namespace {

std::vector<int32_t> Tokens(int n, int first = 100) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), first);
  return t;
}

TEST(BlockManagerTest, AllocatesAndFrees) {
  BlockManager b(4, 16);
  BlockTable t;
  EXPECT_TRUE(b.EnsureCapacity(t, 33));
  EXPECT_EQ(t.global.size(), 3u);
  EXPECT_FALSE(b.EnsureCapacity(t, 80));  // needs 5 > 4
  EXPECT_EQ(t.global.size(), 3u);
  b.Free(t);
  EXPECT_EQ(b.free_blocks(), 4);
  EXPECT_TRUE(t.empty());
}

TEST(BlockManagerTest, SharedPrefixBlocksAreReferenceCounted) {
  BlockManager b(8, 4, /*prefix_cache=*/true);
  const auto tokens = Tokens(10);
  BlockTable a;
  BlockChain chain_a;
  ASSERT_TRUE(b.EnsureCapacity(a, 10));
  b.Register(tokens, 10, /*salt=*/7, a, chain_a);
  EXPECT_EQ(chain_a.hashed_blocks, 2);  // the third block is not full
  EXPECT_EQ(b.cached_blocks(), 2);

  BlockTable c;
  BlockChain chain_c;
  EXPECT_EQ(b.MatchPrefix(tokens, 9, 7, c, chain_c), 8);
  ASSERT_EQ(c.global.size(), 2u);
  EXPECT_EQ(c.global[0], a.global[0]);
  EXPECT_EQ(b.ref_count(a.global[0]), 2);
  EXPECT_EQ(chain_c.last_hash, chain_a.last_hash);

  // Another salt, or other tokens, share nothing.
  BlockTable d;
  BlockChain chain_d;
  EXPECT_EQ(b.MatchPrefix(tokens, 9, 8, d, chain_d), 0);
  EXPECT_EQ(b.MatchPrefix(Tokens(10, 5), 9, 7, d, chain_d), 0);
  // Only the first block matches when the second differs.
  auto other = tokens;
  other[5] = 1;
  EXPECT_EQ(b.MatchPrefix(other, 9, 7, d, chain_d), 4);
  b.Free(d);

  b.Free(a);
  EXPECT_EQ(b.ref_count(c.global[0]), 1);
  EXPECT_EQ(b.used_blocks(), 2);
  b.Free(c);
  EXPECT_EQ(b.used_blocks(), 0);
  EXPECT_EQ(b.cached_blocks(), 2);  // free, but still cached
  EXPECT_EQ(b.free_blocks(), 8);
}

TEST(BlockManagerTest, CachedBlocksAreEvictedLeastRecentlyFreedFirst) {
  BlockManager b(4, 2, true);
  BlockTable x, y;
  BlockChain cx, cy;
  const auto tx = Tokens(4, 0), ty = Tokens(4, 50);
  ASSERT_TRUE(b.EnsureCapacity(x, 4));
  b.Register(tx, 4, 0, x, cx);
  ASSERT_TRUE(b.EnsureCapacity(y, 4));
  b.Register(ty, 4, 0, y, cy);
  b.Free(x);  // freed first: evicted first
  b.Free(y);
  EXPECT_EQ(b.cached_blocks(), 4);
  BlockTable z;
  ASSERT_TRUE(b.EnsureCapacity(z, 4));  // needs two blocks: both of x's go
  EXPECT_EQ(b.cached_blocks(), 2);
  BlockTable m;
  BlockChain cm;
  EXPECT_EQ(b.MatchPrefix(tx, 4, 0, m, cm), 0);
  EXPECT_EQ(b.MatchPrefix(ty, 4, 0, m, cm), 4);
  b.Free(m);
  b.Free(z);
}

TEST(BlockManagerTest, ForkSharesAndAWriteCopiesOnlyASharedBlock) {
  BlockManager b(6, 4);
  BlockTable parent;
  ASSERT_TRUE(b.EnsureCapacity(parent, 6));  // two blocks, the second half full
  BlockTable child = b.Fork(parent);
  EXPECT_EQ(child.global, parent.global);
  EXPECT_EQ(b.ref_count(parent.global[1]), 2);
  bool ok;
  auto copy = b.PrepareWrite(child, 6, &ok);  // position 6 is in the shared second block
  ASSERT_TRUE(ok);
  ASSERT_EQ(copy.size(), 1u);
  EXPECT_EQ(copy[0].first, parent.global[1]);
  EXPECT_EQ(copy[0].second, child.global[1]);
  EXPECT_NE(child.global[1], parent.global[1]);
  EXPECT_EQ(b.ref_count(parent.global[1]), 1);
  EXPECT_EQ(child.global[0], parent.global[0]);  // untouched blocks stay shared
  EXPECT_TRUE(b.PrepareWrite(child, 7, &ok).empty());  // now its own: written in place
  EXPECT_TRUE(ok);
  b.Free(parent);
  b.Free(child);
  EXPECT_EQ(b.free_blocks(), 6);
}

TEST(BlockManagerTest, CopyOnWriteFailsCleanlyWhenNoBlockIsFree) {
  BlockManager b(2, 4);
  BlockTable parent;
  ASSERT_TRUE(b.EnsureCapacity(parent, 8));
  auto child = b.Fork(parent);
  bool ok;
  EXPECT_TRUE(b.PrepareWrite(child, 5, &ok).empty());
  EXPECT_FALSE(ok);
  EXPECT_EQ(child.global, parent.global);
  b.Free(child);
  b.Free(parent);
}

// Sliding windows: local layers see 8 positions; a block is 4 positions; each block index of the local layers
// takes `groups` blocks.
constexpr KvWindow kWindow8{8, 2};

// Computes tokens[0, n) in runs of `chunk` as the scheduler does: blocks for the run, then the run's blocks named,
// then the window slid past what the next position no longer sees.
void Compute(BlockManager& b, std::span<const int32_t> tokens, int64_t from, int64_t n, int chunk, BlockTable& t,
             BlockChain& chain, int64_t* most_local = nullptr) {
  for (int64_t p = from; p < n; p += chunk) {
    const int64_t end = std::min<int64_t>(n, p + chunk);
    ASSERT_TRUE(b.EnsureCapacity(t, end)) << p;
    if (most_local != nullptr) *most_local = std::max<int64_t>(*most_local, static_cast<int64_t>(t.local.size()));
    b.Register(tokens, end, 0, t, chain);
    b.Slide(t, end);
  }
}

TEST(BlockManagerWindowTest, LocalBlocksAreGivenBackAsTheWindowPassesGlobalOnesStay) {
  BlockManager b(64, 4, false, kWindow8);
  const auto tokens = Tokens(40);
  BlockTable t;
  BlockChain chain;
  int64_t most_local = 0;
  Compute(b, tokens, 0, 40, 1, t, chain, &most_local);  // decoding, one position a step
  EXPECT_EQ(t.global.size(), 10u);
  // The next query (position 40) sees 33..40: block indices 8 and 9 (and 10 once it is written); index 7 is kept
  // for a fork that starts a block behind.
  EXPECT_EQ(t.local_begin, 7);
  EXPECT_EQ(t.local.size(), 3u * 2);
  EXPECT_EQ(b.used_blocks(), 10 + 6);
  EXPECT_EQ(b.window_released_blocks(), 7 * 2);
  // At most the window and the position being written, over block boundaries, and the index kept: 4 indices.
  EXPECT_LE(most_local, 4 * 2);
  EXPECT_LE(b.used_blocks(), b.MostBlocksHeld(40, 1));
  b.Free(t);
  EXPECT_EQ(b.free_blocks(), 64);
  EXPECT_EQ(t.local_begin, 0);
}

TEST(BlockManagerWindowTest, WithoutWindowsATableHoldsOnlyGlobalBlocks) {
  BlockManager b(16, 4, false, KvWindow{});
  const auto tokens = Tokens(40);
  BlockTable t;
  BlockChain chain;
  Compute(b, tokens, 0, 40, 8, t, chain);
  EXPECT_EQ(t.global.size(), 10u);
  EXPECT_TRUE(t.local.empty());
  EXPECT_EQ(b.used_blocks(), 10);
  EXPECT_EQ(b.MostBlocksHeld(40, 8), 10);
  EXPECT_EQ(b.window_released_blocks(), 0);
  b.Free(t);
}

TEST(BlockManagerWindowTest, MostBlocksHeldBoundsEveryChunking) {
  for (int chunk : {1, 3, 4, 7, 16}) {
    BlockManager b(200, 4, false, kWindow8);
    const auto tokens = Tokens(90);
    BlockTable t;
    BlockChain chain;
    int64_t most = 0;
    for (int64_t p = 0; p < 90; p += chunk) {
      ASSERT_TRUE(b.EnsureCapacity(t, std::min<int64_t>(90, p + chunk)));
      most = std::max<int64_t>(most, b.used_blocks());
      b.Slide(t, std::min<int64_t>(90, p + chunk));
    }
    EXPECT_LE(most, b.MostBlocksHeld(90, chunk)) << chunk;
    EXPECT_GT(b.MostBlocksHeld(90, chunk), b.BlocksFor(90)) << chunk;
    b.Free(t);
  }
}

TEST(BlockManagerWindowTest, PrefixHitReusesOnlyLocalBlocksStillHeldOrCached) {
  // One group of local layers; window 8, blocks of 4.
  BlockManager b(20, 4, true, KvWindow{8, 1});
  const auto tokens = Tokens(24);
  BlockTable a;
  BlockChain ca;
  Compute(b, tokens, 0, 24, 4, a, ca);
  ASSERT_EQ(a.global.size(), 6u);
  // Position 24 sees 17..24: indices 4 and 5, and 3 is kept (0..2 went back to the pool, cached).
  ASSERT_EQ(a.local_begin, 3);
  // 6 global + 3 local held, 3 local cached.
  EXPECT_EQ(b.used_blocks(), 9);
  EXPECT_EQ(b.cached_blocks(), 6 + 6);

  // The same prompt: the first 5 blocks match (its last token is always computed); position 20 sees 13..20, local
  // indices 3 and 4 (held by a).
  BlockTable c;
  BlockChain cc;
  EXPECT_EQ(b.MatchPrefix(tokens, 23, 0, c, cc), 20);
  EXPECT_EQ(c.global.size(), 5u);
  EXPECT_EQ(c.local_begin, 3);
  ASSERT_EQ(c.local.size(), 2u);
  EXPECT_EQ(c.local[0], a.local[0]);
  EXPECT_EQ(c.local[1], a.local[1]);
  EXPECT_EQ(b.ref_count(a.local[0]), 2);
  EXPECT_EQ(cc.last_hash, BlockManager::PrefixHashes(tokens, 20, 4, 0).back());
  b.Free(c);
  b.Free(a);
  EXPECT_EQ(b.used_blocks(), 0);

  // Evicting the local blocks (least recently freed first: those the window passed) leaves the global ones cached,
  // but no prefix whose window they held can be taken.
  BlockTable x;
  ASSERT_TRUE(b.EnsureCapacity(x, 4 * 7));  // 7 global + 7 local of the 8 never used and 6 cached local
  EXPECT_EQ(b.cached_blocks(), 6);
  BlockTable d;
  BlockChain cd;
  EXPECT_EQ(b.MatchPrefix(tokens, 23, 0, d, cd), 0);
  EXPECT_TRUE(d.empty());
  b.Free(x);

  // Without windows the same pool keeps a hit as long as the global blocks are cached.
  BlockManager plain(20, 4, true);
  BlockTable p;
  BlockChain cp;
  Compute(plain, tokens, 0, 24, 4, p, cp);
  plain.Free(p);
  BlockTable y;
  ASSERT_TRUE(plain.EnsureCapacity(y, 4 * 14));
  EXPECT_EQ(plain.MatchPrefix(tokens, 23, 0, d, cd), 20);
  plain.Free(d);
  plain.Free(y);
}

TEST(BlockManagerWindowTest, ForkSharesLocalBlocksAndAWriteCopiesEveryGroup) {
  BlockManager b(64, 4, false, kWindow8);
  const auto tokens = Tokens(30);
  BlockTable parent;
  BlockChain chain;
  Compute(b, tokens, 0, 30, 5, parent, chain);  // position 30 sees 23..30: indices 5..7, and 4 is kept
  ASSERT_EQ(parent.local_begin, 4);
  ASSERT_EQ(parent.local.size(), 4u * 2);
  const int held = b.used_blocks();
  BlockTable child = b.Fork(parent);
  EXPECT_EQ(b.used_blocks(), held);
  EXPECT_EQ(child.local, parent.local);
  EXPECT_EQ(b.ref_count(parent.local[7]), 2);
  // Position 30 is in block index 7: its global block and both local groups are shared, so all three are copied.
  bool ok;
  auto copies = b.PrepareWrite(child, 30, &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(copies.size(), 3u);
  EXPECT_EQ(copies[0].first, parent.global[7]);
  EXPECT_EQ(copies[1].first, parent.local[6]);
  EXPECT_EQ(copies[2].first, parent.local[7]);
  EXPECT_EQ(copies[2].second, child.local[7]);
  EXPECT_EQ(b.ref_count(parent.local[7]), 1);
  EXPECT_EQ(child.local[0], parent.local[0]);  // blocks not written stay shared
  // The child's window moves on: it gives back its hold on the shared local blocks; the parent keeps them, so
  // none is counted as given back.
  const int64_t released = b.window_released_blocks();
  b.Slide(child, 36);
  EXPECT_EQ(child.local_begin, 6);
  EXPECT_EQ(b.ref_count(parent.local[0]), 1);
  EXPECT_EQ(b.window_released_blocks(), released);
  b.Free(child);
  b.Free(parent);
  EXPECT_EQ(b.free_blocks(), 64);
}

}  // namespace
}  // namespace gemma
