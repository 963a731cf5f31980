#include "shard/model/huge_pages.h"

#include <sys/mman.h>

#include <algorithm>
#include <new>

namespace gemma {

HugePageBuffer AllocateHugePages(int64_t bytes) {
  constexpr size_t kHuge = 2 << 20;
  const size_t size = std::max((static_cast<size_t>(bytes) + kHuge - 1) / kHuge * kHuge, kHuge);
  void* p = std::aligned_alloc(kHuge, size);
  if (p == nullptr) throw std::bad_alloc();
  ::madvise(p, size, MADV_HUGEPAGE);
  return HugePageBuffer(static_cast<uint8_t*>(p));
}

}  // namespace gemma
