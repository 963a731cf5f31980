// Cases for test_main_test.cc, run as their own binary (never registered with ctest): a suite whose set-up fails
// and a test that skips itself.
#include "gtest/gtest.h"

class SetUpFails : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { FAIL() << "the suite's servers never started"; }
};

TEST_F(SetUpFails, NeverRuns) {}

TEST(SkipsItself, NoDevice) { GTEST_SKIP() << "no device"; }

TEST(Passes, Always) { SUCCEED(); }
