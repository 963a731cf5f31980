#include "tools/memory_bandwidth.h"

#include <omp.h>

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>

namespace gemma {

double MeasureReadBandwidth(int64_t bytes, int repeats) {
  constexpr int64_t kHugePage = 2 << 20;
  bytes = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  const int64_t n = bytes / static_cast<int64_t>(sizeof(uint64_t));
  // Huge pages, as the weights get (see MappedFile): a fair ceiling for them.
  std::unique_ptr<uint64_t[], decltype(&std::free)> buf(static_cast<uint64_t*>(std::aligned_alloc(kHugePage, bytes)),
                                                       &std::free);
  ::madvise(buf.get(), bytes, MADV_HUGEPAGE);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<uint64_t>(i);
  double best = 0.0;
  volatile uint64_t sink = 0;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    uint64_t total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
    for (int64_t i = 0; i < n; ++i) total += buf[i];
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    sink = sink + total;
    best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / secs);
  }
  return best;
}

}  // namespace gemma
