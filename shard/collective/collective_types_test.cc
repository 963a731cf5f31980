// Host and device collectives are different types: neither can stand in for the other, and a raw pointer becomes
// a device buffer only when someone writes DeviceFloats.
#include <type_traits>

#include "gtest/gtest.h"
#include "shard/collective/collective.h"
#include "shard/collective/device_collective.h"

namespace gemma {
namespace {

static_assert(!std::is_convertible_v<DeviceCollective*, HostCollective*>);
static_assert(!std::is_convertible_v<HostCollective*, DeviceCollective*>);
static_assert(!std::is_convertible_v<float*, DeviceFloats>);
static_assert(!std::is_convertible_v<const float*, ConstDeviceFloats>);
static_assert(std::is_convertible_v<DeviceFloats, ConstDeviceFloats>);

TEST(CollectiveTypesTest, RankCheckNamesBothSides) {
  auto c = MakeSingleRankCollective();
  EXPECT_TRUE(CheckCollectiveRank(*c, 0, 1).ok());
  const absl::Status s = CheckCollectiveRank(*c, 1, 2);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("rank 1/2"), std::string::npos) << s;
}

}  // namespace
}  // namespace gemma
