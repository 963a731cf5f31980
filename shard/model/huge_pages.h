// Large buffers on 2 MB pages. Weights stream through every step and the KV cache is read at scattered blocks; with
// 4 KB pages both pay TLB misses on every pass (and, under hypervisors with shadow page tables, far dearer ones).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>

namespace gemma {

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};
using HugePageBuffer = std::unique_ptr<uint8_t[], FreeDeleter>;

// At least `bytes` (whole 2 MB pages, one at the least), 2 MB aligned and advised as huge pages; the contents are
// undefined. Throws std::bad_alloc when memory is short.
HugePageBuffer AllocateHugePages(int64_t bytes);

}  // namespace gemma
