#include "worker/group_lease.h"

#include <gtest/gtest.h>

#include <thread>

namespace gemma {
namespace {

using std::chrono::milliseconds;

class GroupLeaseTest : public ::testing::Test {
 protected:
  GroupLease lease_{[this] { return now_; }, /*first_epoch=*/0};
  std::chrono::steady_clock::time_point now_{};

  static worker::v1::LeaseRequest Claim(const std::string& id, int ttl_ms = 1000) {
    worker::v1::LeaseRequest r;
    r.set_router_id(id);
    r.set_router_address(id + ":50052");
    r.set_protocol_version(worker::v1::PROTOCOL_VERSION_CURRENT);
    r.set_ttl_ms(ttl_ms);
    r.set_load(3);
    r.set_capacity(320);
    return r;
  }
};

TEST_F(GroupLeaseTest, OneHolderAtATimeAndTheOthersLearnWhoItIs) {
  auto a = lease_.Acquire(Claim("a"));
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a->granted());
  EXPECT_EQ(a->epoch(), 1u);
  auto b = lease_.Acquire(Claim("b"));
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(b->granted());
  EXPECT_EQ(b->holder_id(), "a");
  EXPECT_EQ(b->holder_address(), "a:50052");
  EXPECT_EQ(b->holder_load(), 3);
  EXPECT_EQ(b->holder_capacity(), 320);
  EXPECT_EQ(b->epoch(), 1u);
}

TEST_F(GroupLeaseTest, ALapsedLeaseMovesToTheNextRouterAndFencesTheOldOne) {
  const uint64_t old_epoch = lease_.Acquire(Claim("a"))->epoch();
  EXPECT_TRUE(lease_.CheckStep(old_epoch).ok());
  lease_.StepDone(old_epoch);
  now_ += milliseconds(999);
  EXPECT_FALSE(lease_.Acquire(Claim("b"))->granted());
  now_ += milliseconds(2);
  auto b = lease_.Acquire(Claim("b"));
  ASSERT_TRUE(b->granted());
  EXPECT_EQ(b->epoch(), old_epoch + 1);
  const absl::Status stale = lease_.CheckStep(old_epoch);
  EXPECT_TRUE(absl::IsAborted(stale)) << stale;
  EXPECT_NE(stale.message().find("router b holds it"), std::string::npos) << stale;
  EXPECT_TRUE(lease_.CheckStep(b->epoch()).ok());
  // The old holder coming back does not get it back while b renews.
  auto again = lease_.Acquire(Claim("a"));
  EXPECT_FALSE(again->granted());
  EXPECT_EQ(again->holder_id(), "b");
}

TEST_F(GroupLeaseTest, StepsAndRenewalsKeepTheLease) {
  const uint64_t epoch = lease_.Acquire(Claim("a"))->epoch();
  for (int i = 0; i < 10; ++i) {
    now_ += milliseconds(600);
    ASSERT_TRUE(lease_.CheckStep(epoch).ok());
    lease_.StepDone(epoch);
  }
  EXPECT_FALSE(lease_.Acquire(Claim("b"))->granted());
  now_ += milliseconds(600);
  EXPECT_TRUE(lease_.Acquire(Claim("a"))->granted());
  EXPECT_EQ(lease_.Get().epoch(), epoch);
}

TEST_F(GroupLeaseTest, AStepLongerThanTheTtlKeepsTheLeaseUntilItEnds) {
  const uint64_t epoch = lease_.Acquire(Claim("a"))->epoch();
  ASSERT_TRUE(lease_.CheckStep(epoch).ok());
  now_ += milliseconds(5000);  // a long prefill
  EXPECT_FALSE(lease_.Acquire(Claim("b"))->granted());
  lease_.StepDone(epoch);
  now_ += milliseconds(999);
  EXPECT_FALSE(lease_.Acquire(Claim("b"))->granted()) << "the step's end renewed the lease";
  now_ += milliseconds(2);
  EXPECT_TRUE(lease_.Acquire(Claim("b"))->granted());
}

TEST_F(GroupLeaseTest, TheHolderHearsThatARouterWithoutGroupsWantsOne) {
  lease_.Acquire(Claim("a"));
  EXPECT_FALSE(lease_.Acquire(Claim("a"))->wanted());
  auto b = Claim("b");
  b.set_wants_group(true);
  EXPECT_FALSE(lease_.Acquire(b)->granted());
  EXPECT_TRUE(lease_.Acquire(Claim("a"))->wanted());
  now_ += milliseconds(1001);  // b stopped asking (it found a group elsewhere)
  EXPECT_FALSE(lease_.Acquire(Claim("a"))->wanted());
}

TEST_F(GroupLeaseTest, AHolderThatLapsedUntakenKeepsItsEpoch) {
  const uint64_t epoch = lease_.Acquire(Claim("a"))->epoch();
  now_ += milliseconds(5000);
  EXPECT_TRUE(lease_.Get().holder_id().empty());
  EXPECT_TRUE(lease_.CheckStep(epoch).ok());
  EXPECT_EQ(lease_.Acquire(Claim("a"))->epoch(), epoch);
}

TEST_F(GroupLeaseTest, ReleaseFreesAtOnceAndOnlyForTheHolder) {
  const uint64_t epoch = lease_.Acquire(Claim("a"))->epoch();
  lease_.Release(Claim("b"));
  EXPECT_EQ(lease_.Get().holder_id(), "a");
  lease_.Release(Claim("a"));
  EXPECT_TRUE(absl::IsAborted(lease_.CheckStep(epoch)));
  auto b = lease_.Acquire(Claim("b"));
  EXPECT_TRUE(b->granted());
  EXPECT_EQ(b->epoch(), epoch + 1);
}

TEST_F(GroupLeaseTest, StepsWithoutAnEpochAreRefused) {
  EXPECT_TRUE(absl::IsAborted(lease_.CheckStep(0)));
  lease_.Acquire(Claim("a"));
  EXPECT_TRUE(absl::IsAborted(lease_.CheckStep(0)));
}

TEST_F(GroupLeaseTest, ADrainingGroupTakesNoNewHolder) {
  lease_.Acquire(Claim("a", 200));
  lease_.SetDraining();
  EXPECT_TRUE(lease_.Acquire(Claim("a", 200))->granted());
  now_ += milliseconds(300);
  auto b = lease_.Acquire(Claim("b"));
  EXPECT_FALSE(b->granted());
  EXPECT_TRUE(b->draining());
}

TEST(GroupLeaseEpochTest, ARestartedWorkerNeverRepeatsAnEpoch) {
  GroupLease first;
  worker::v1::LeaseRequest r;
  r.set_router_id("a");
  r.set_protocol_version(worker::v1::PROTOCOL_VERSION_CURRENT);
  r.set_ttl_ms(1000);
  const uint64_t before = first.Acquire(r)->epoch();
  std::this_thread::sleep_for(std::chrono::milliseconds(2));  // a restart takes far longer
  GroupLease restarted;
  r.set_router_id("b");
  EXPECT_GT(restarted.Acquire(r)->epoch(), before);
}

TEST_F(GroupLeaseTest, BadRequestsSayWhatIsWrong) {
  auto r = Claim("a");
  r.set_protocol_version(1);
  auto s = lease_.Acquire(r);
  EXPECT_TRUE(absl::IsFailedPrecondition(s.status()));
  EXPECT_NE(s.status().message().find("worker protocol 1"), std::string::npos) << s.status();
  EXPECT_TRUE(absl::IsInvalidArgument(lease_.Acquire(Claim("")).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(lease_.Acquire(Claim("a", 50)).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(lease_.Acquire(Claim("a", 700000)).status()));
  EXPECT_EQ(lease_.Get().epoch(), 0u);
}

}  // namespace
}  // namespace gemma
