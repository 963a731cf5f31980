#include "shard/cpu/fma_throughput.h"

#include <omp.h>

#include <cmath>

#include "gtest/gtest.h"

namespace gemma {
namespace {

// Not a timed test: a finite rate, above the slowest scalar one (a 1 GHz core, one multiply-add a cycle), on one
// thread.
TEST(FmaThroughputTest, OneThreadGivesAPlausibleRate) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const double rate = MeasureFmaThroughput(2);
  omp_set_num_threads(saved);
  EXPECT_TRUE(std::isfinite(rate));
  EXPECT_GT(rate, 1e9);
}

}  // namespace
}  // namespace gemma
