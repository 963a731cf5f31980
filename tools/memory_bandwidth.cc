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
  // Each pass is read twice: as one plain stream per thread, and as the weight kernels read, four streams per
  // thread (a tile's rows) with a software prefetch 4 KB ahead (hardware prefetchers stop at 4 KB pages). On some
  // CPUs the second reads 1.4x the first, and a kernel measured against the first ran "above the bandwidth".
  for (int r = 0; r < repeats; ++r) {
    for (const bool as_kernels : {false, true}) {
      const auto start = std::chrono::steady_clock::now();
      uint64_t total = 0;
      if (as_kernels) {
        constexpr int kStreams = 4;
        constexpr int64_t kLine = 64 / sizeof(uint64_t), kAhead = 4096 / sizeof(uint64_t);
#pragma omp parallel reduction(+ : total)
        {
          const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
          const int64_t begin = n * t / threads, end = n * (t + 1) / threads;
          const int64_t len = (end - begin) / kStreams / kLine * kLine;
          for (int64_t i = 0; i < len; i += kLine) {
            for (int s = 0; s < kStreams; ++s) {
              const uint64_t* line = buf.get() + begin + s * len + i;
              __builtin_prefetch(buf.get() + std::min(begin + s * len + i + kAhead, n - 1));
              for (int64_t j = 0; j < kLine; ++j) total += line[j];
            }
          }
          for (int64_t i = begin + kStreams * len; i < end; ++i) total += buf[i];
        }
      } else {
#pragma omp parallel for schedule(static) reduction(+ : total)
        for (int64_t i = 0; i < n; ++i) total += buf[i];
      }
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      sink = sink + total;
      best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / secs);
    }
  }
  return best;
}

}  // namespace gemma
