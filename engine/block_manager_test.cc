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
  std::vector<int32_t> t;
  EXPECT_TRUE(b.EnsureCapacity(t, 33));
  EXPECT_EQ(t.size(), 3u);
  EXPECT_FALSE(b.EnsureCapacity(t, 80));  // needs 5 > 4
  EXPECT_EQ(t.size(), 3u);
  b.Free(t);
  EXPECT_EQ(b.free_blocks(), 4);
  EXPECT_TRUE(t.empty());
}

TEST(BlockManagerTest, SharedPrefixBlocksAreReferenceCounted) {
  BlockManager b(8, 4, /*prefix_cache=*/true);
  const auto tokens = Tokens(10);
  std::vector<int32_t> a;
  BlockChain chain_a;
  ASSERT_TRUE(b.EnsureCapacity(a, 10));
  b.Register(tokens, 10, /*salt=*/7, a, chain_a);
  EXPECT_EQ(chain_a.hashed_blocks, 2);  // the third block is not full
  EXPECT_EQ(b.cached_blocks(), 2);

  std::vector<int32_t> c;
  BlockChain chain_c;
  EXPECT_EQ(b.MatchPrefix(tokens, 9, 7, c, chain_c), 8);
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0], a[0]);
  EXPECT_EQ(b.ref_count(a[0]), 2);
  EXPECT_EQ(chain_c.last_hash, chain_a.last_hash);

  // Another salt, or other tokens, share nothing.
  std::vector<int32_t> d;
  BlockChain chain_d;
  EXPECT_EQ(b.MatchPrefix(tokens, 9, 8, d, chain_d), 0);
  EXPECT_EQ(b.MatchPrefix(Tokens(10, 5), 9, 7, d, chain_d), 0);
  // Only the first block matches when the second differs.
  auto other = tokens;
  other[5] = 1;
  EXPECT_EQ(b.MatchPrefix(other, 9, 7, d, chain_d), 4);
  b.Free(d);

  b.Free(a);
  EXPECT_EQ(b.ref_count(c[0]), 1);
  EXPECT_EQ(b.used_blocks(), 2);
  b.Free(c);
  EXPECT_EQ(b.used_blocks(), 0);
  EXPECT_EQ(b.cached_blocks(), 2);  // free, but still cached
  EXPECT_EQ(b.free_blocks(), 8);
}

TEST(BlockManagerTest, CachedBlocksAreEvictedLeastRecentlyFreedFirst) {
  BlockManager b(4, 2, true);
  std::vector<int32_t> x, y;
  BlockChain cx, cy;
  const auto tx = Tokens(4, 0), ty = Tokens(4, 50);
  ASSERT_TRUE(b.EnsureCapacity(x, 4));
  b.Register(tx, 4, 0, x, cx);
  ASSERT_TRUE(b.EnsureCapacity(y, 4));
  b.Register(ty, 4, 0, y, cy);
  b.Free(x);  // freed first: evicted first
  b.Free(y);
  EXPECT_EQ(b.cached_blocks(), 4);
  std::vector<int32_t> z;
  ASSERT_TRUE(b.EnsureCapacity(z, 4));  // needs two blocks: both of x's go
  EXPECT_EQ(b.cached_blocks(), 2);
  std::vector<int32_t> m;
  BlockChain cm;
  EXPECT_EQ(b.MatchPrefix(tx, 4, 0, m, cm), 0);
  EXPECT_EQ(b.MatchPrefix(ty, 4, 0, m, cm), 4);
  b.Free(m);
  b.Free(z);
}

TEST(BlockManagerTest, ForkSharesAndAWriteCopiesOnlyASharedBlock) {
  BlockManager b(6, 4);
  std::vector<int32_t> parent;
  ASSERT_TRUE(b.EnsureCapacity(parent, 6));  // two blocks, the second half full
  std::vector<int32_t> child = b.Fork(parent);
  EXPECT_EQ(child, parent);
  EXPECT_EQ(b.ref_count(parent[1]), 2);
  bool ok;
  auto copy = b.PrepareWrite(child, 6, &ok);  // position 6 is in the shared second block
  ASSERT_TRUE(ok);
  ASSERT_TRUE(copy.has_value());
  EXPECT_EQ(copy->first, parent[1]);
  EXPECT_EQ(copy->second, child[1]);
  EXPECT_NE(child[1], parent[1]);
  EXPECT_EQ(b.ref_count(parent[1]), 1);
  EXPECT_EQ(child[0], parent[0]);  // untouched blocks stay shared
  EXPECT_FALSE(b.PrepareWrite(child, 7, &ok).has_value());  // now its own: written in place
  EXPECT_TRUE(ok);
  b.Free(parent);
  b.Free(child);
  EXPECT_EQ(b.free_blocks(), 6);
}

TEST(BlockManagerTest, CopyOnWriteFailsCleanlyWhenNoBlockIsFree) {
  BlockManager b(2, 4);
  std::vector<int32_t> parent;
  ASSERT_TRUE(b.EnsureCapacity(parent, 8));
  auto child = b.Fork(parent);
  bool ok;
  EXPECT_FALSE(b.PrepareWrite(child, 5, &ok).has_value());
  EXPECT_FALSE(ok);
  EXPECT_EQ(child, parent);
  b.Free(child);
  b.Free(parent);
}

}  // namespace
}  // namespace gemma
