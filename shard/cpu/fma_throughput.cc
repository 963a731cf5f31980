#include "shard/cpu/fma_throughput.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "shard/cpu/fma_throughput.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace gemma {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Enough independent chains to cover the multiply-add latency times the units that run them (4 x 2 on AVX-512
// cores, 4-5 x 2 on AVX2 ones), few enough to stay in registers.
constexpr int kChains = 12;

// `rounds` of kChains multiply-adds on this thread; returns their lanes' sum so the work cannot be dropped.
float FmaChains(int64_t rounds) {
  const hn::ScalableTag<float> d;
  hn::Vec<decltype(d)> acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = hn::Set(d, 0.001f * static_cast<float>(i));
  const auto mul = hn::Set(d, 0.9999f), add = hn::Set(d, 1e-6f);
  for (int64_t r = 0; r < rounds; ++r) {
    for (int i = 0; i < kChains; ++i) acc[i] = hn::MulAdd(acc[i], mul, add);
  }
  float sum = 0;
  for (int i = 0; i < kChains; ++i) sum += hn::GetLane(hn::SumOfLanes(d, acc[i]));
  return sum;
}

int64_t MultiplyAddsPerRound() { return kChains * static_cast<int64_t>(hn::Lanes(hn::ScalableTag<float>())); }

}  // namespace HWY_NAMESPACE
}  // namespace gemma
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace gemma {

HWY_EXPORT(FmaChains);
HWY_EXPORT(MultiplyAddsPerRound);

double MeasureFmaThroughput(int repeats) {
  constexpr int64_t kRounds = 20'000'000;  // tens of milliseconds a repeat
  const int64_t per_round = HWY_DYNAMIC_DISPATCH(MultiplyAddsPerRound)();
  double best = 0;
  volatile float sink = 0;
  for (int r = 0; r < repeats; ++r) {
    int threads = 1;
    float sum = 0;
    const auto start = std::chrono::steady_clock::now();
#pragma omp parallel reduction(+ : sum)
    {
#pragma omp single
      threads = omp_get_num_threads();
      sum += HWY_DYNAMIC_DISPATCH(FmaChains)(kRounds);
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    sink = sink + sum;
    best = std::max(best, static_cast<double>(threads) * kRounds * per_round / secs);
  }
  return best;
}

}  // namespace gemma
#endif
