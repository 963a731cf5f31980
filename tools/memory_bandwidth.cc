#include "tools/memory_bandwidth.h"

#include <omp.h>

#include <chrono>
#include <memory>

namespace gemma {

double MeasureReadBandwidth(int64_t bytes, int repeats) {
  const int64_t n = bytes / static_cast<int64_t>(sizeof(uint64_t));
  std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);
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
