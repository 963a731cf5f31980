// The prefix cache's salt for changed models: equal changes share KV, any difference does not.
#include "engine/cache_salt.h"

#include <vector>

#include "gtest/gtest.h"

namespace gemma {
namespace {

uint64_t Salt(std::span<const Intervention> interventions) { return ModelChangesCacheSalt(0, interventions); }

TEST(CacheSaltTest, SeparatesEveryDifference) {
  EXPECT_EQ(Salt({}), 0u);
  Intervention a{InterventionKind::kScaleMlp, 0, {}, 0.5f};
  Intervention b = a;
  b.factor = 0.25f;
  Intervention c = a;
  c.layer = 1;
  Intervention d{InterventionKind::kSteer, 0, {1, 2, 3, 4}};
  Intervention e = d;
  e.vector[3] = 5;
  const std::vector<std::vector<Intervention>> sets = {{a}, {b},    {c},   {d},
                                                       {e}, {a, d}, {d, a}};
  for (size_t i = 0; i < sets.size(); ++i) {
    EXPECT_NE(Salt(sets[i]), 0u);
    EXPECT_EQ(Salt(sets[i]),
              Salt(std::vector<Intervention>(sets[i])));
    for (size_t j = 0; j < i; ++j) {
      EXPECT_NE(Salt(sets[i]),
                Salt(sets[j]))
          << i << " " << j;
    }
  }
}

TEST(CacheSaltTest, AdaptersAreSaltedApartFromTheBaseAndEachOther) {
  EXPECT_NE(ModelChangesCacheSalt(1, {}), 0u);
  EXPECT_NE(ModelChangesCacheSalt(1, {}), ModelChangesCacheSalt(2, {}));
  Intervention a{InterventionKind::kScaleMlp, 0, {}, 0.5f};
  EXPECT_NE(ModelChangesCacheSalt(1, {&a, 1}), ModelChangesCacheSalt(0, {&a, 1}));
}

}  // namespace
}  // namespace gemma
