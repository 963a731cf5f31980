// The KV cache plan against a fake device: what the cache gets, and the errors that say what was needed.
#include "shard/cuda/memory_plan.h"

#include "gtest/gtest.h"

namespace gemma::cuda {
namespace {

constexpr int64_t kGiB = int64_t{1} << 30, kMiB = int64_t{1} << 20;

class FakeDeviceMemory : public DeviceMemory {
 public:
  FakeDeviceMemory(int64_t free_bytes, int64_t total_bytes) : reading_{free_bytes, total_bytes} {}
  absl::StatusOr<DeviceMemoryReading> Read() override {
    ++reads;
    return reading_;
  }
  int reads = 0;

 private:
  DeviceMemoryReading reading_;
};

KvPlanRequest Planned(double fraction) {
  KvPlanRequest r;
  r.fraction = fraction;
  r.block_bytes = 2 * kMiB;
  r.min_blocks = 100;
  r.reserve_bytes = 256 * kMiB;
  r.limits = "2048 tokens, 256 sequences, 8192 positions";
  return r;
}

TEST(MemoryPlanTest, TheCacheTakesTheFractionLessWhatIsUsed) {
  FakeDeviceMemory device(/*free=*/60 * kGiB, /*total=*/80 * kGiB);  // 20 GiB used: weights, buffers, runtime
  auto plan = PlanKvCache(device, Planned(0.9));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(device.reads, 1);
  EXPECT_EQ(plan->used_bytes, 20 * kGiB);
  EXPECT_EQ(plan->budget_bytes, 72 * kGiB);
  EXPECT_EQ(plan->blocks, (52 * kGiB - 256 * kMiB) / (2 * kMiB));
}

TEST(MemoryPlanTest, NeverMoreThanIsFree) {
  // Another process holds memory: the budget would allow more than is free.
  FakeDeviceMemory device(/*free=*/10 * kGiB, /*total=*/80 * kGiB);
  auto plan = PlanKvCache(device, Planned(1.0));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->blocks, (10 * kGiB - 256 * kMiB) / (2 * kMiB));
}

TEST(MemoryPlanTest, TooLittleForOneLongestSequenceSaysWhatItNeedsAndWhatToChange) {
  FakeDeviceMemory device(/*free=*/60 * kGiB, /*total=*/80 * kGiB);
  auto plan = PlanKvCache(device, Planned(0.25));  // 20 GiB budget, all used already
  ASSERT_FALSE(plan.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(plan.status())) << plan.status();
  const std::string m(plan.status().message());
  for (const char* part : {"--gpu_memory_fraction 0.25", "20.0 GiB is already used", "200 MiB (100 blocks)",
                           "--max_model_len", "2048 tokens, 256 sequences, 8192 positions"}) {
    EXPECT_NE(m.find(part), std::string::npos) << part << " missing from: " << m;
  }
}

TEST(MemoryPlanTest, AFixedSizeMustFitWhatIsFree) {
  FakeDeviceMemory device(/*free=*/1 * kGiB, /*total=*/80 * kGiB);
  KvPlanRequest r = Planned(0);
  r.fixed_blocks = 100;  // 200 MiB + 256 MiB kept: fits
  auto plan = PlanKvCache(device, r);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->blocks, 100);
  r.fixed_blocks = 1000;  // 2000 MiB: does not
  plan = PlanKvCache(device, r);
  ASSERT_FALSE(plan.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(plan.status())) << plan.status();
  EXPECT_NE(plan.status().message().find("KV cache"), std::string::npos) << plan.status();
  EXPECT_NE(plan.status().message().find("MiB are free"), std::string::npos) << plan.status();
}

TEST(MemoryPlanTest, AFractionOutsideZeroToOneIsRefused) {
  FakeDeviceMemory device(60 * kGiB, 80 * kGiB);
  for (double bad : {-0.1, 1.5}) {
    auto plan = PlanKvCache(device, Planned(bad));
    ASSERT_FALSE(plan.ok());
    EXPECT_TRUE(absl::IsInvalidArgument(plan.status())) << plan.status();
    EXPECT_NE(plan.status().message().find("allowed: (0, 1]"), std::string::npos) << plan.status();
  }
}

}  // namespace
}  // namespace gemma::cuda
