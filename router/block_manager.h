// KV-cache block accounting for one worker group: the router owns which blocks each sequence holds.
#pragma once

#include <cstdint>
#include <vector>

namespace gemma {

// Not thread-safe: owned by its group's scheduler.
class BlockManager {
 public:
  BlockManager(int num_blocks, int block_size);
  int block_size() const { return block_size_; }
  int num_blocks() const { return num_blocks_; }
  int free_blocks() const { return static_cast<int>(free_.size()); }
  int used_blocks() const { return num_blocks_ - free_blocks(); }
  int BlocksFor(int64_t positions) const { return static_cast<int>((positions + block_size_ - 1) / block_size_); }
  // Grows `table` to cover `positions`; false (and `table` unchanged) when too few blocks are free.
  bool EnsureCapacity(std::vector<int32_t>& table, int64_t positions);
  // Returns every block of `table` to the pool and clears it.
  void Free(std::vector<int32_t>& table);

 private:
  int num_blocks_, block_size_;
  std::vector<int32_t> free_;
};

}  // namespace gemma
