// The main of every test binary: GoogleTest's, plus a line that ctest reads as "skipped" (SKIP_REGULAR_EXPRESSION)
// for a test that skipped itself (GTEST_SKIP: no GPU, no device) and for no other. GoogleTest also prints
// "[  SKIPPED ]" for every test of a suite whose SetUpTestSuite failed (servers that never started, say), and ctest
// reading that line as a skip passed them: a broken suite stayed green.
#include <cstdio>

#include "gtest/gtest.h"
#include "tests/test_main.h"

namespace {

class SelfSkipsMarked : public ::testing::EmptyTestEventListener {
 public:
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (!info.result()->Skipped()) return;
    const ::testing::UnitTest& unit = *::testing::UnitTest::GetInstance();
    const ::testing::TestSuite* suite = unit.current_test_suite();
    // Skipped because a set-up above the test failed: a failure, whatever GoogleTest prints for it.
    if (unit.ad_hoc_test_result().Failed() || (suite != nullptr && suite->ad_hoc_test_result().Failed())) return;
    std::printf("%s %s.%s\n", gemma::testing::kSkipMarker, info.test_suite_name(), info.name());
    std::fflush(stdout);
  }
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::UnitTest::GetInstance()->listeners().Append(new SelfSkipsMarked);
  return RUN_ALL_TESTS();
}
