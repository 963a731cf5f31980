#include <sys/wait.h>

#include <cstdio>
#include <string>

#include "absl/strings/str_replace.h"

#include "gtest/gtest.h"
#include "tests/test_main.h"

namespace gemma {
namespace {

struct CasesRun {
  int exit_code = -1;
  std::string output;
  std::string shown;  // output, safe to print
};

// The cases binary with one filter, stdout and stderr together.
CasesRun RunCases(const std::string& filter) {
  CasesRun r;
  const std::string command = "'" + std::string(GEMMA_TEST_MAIN_CASES) + "' --gtest_filter=" + filter + " 2>&1";
  FILE* p = ::popen(command.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.output.append(buf, n);
  // Shown in a failure's message, the marker itself would make ctest count this test skipped, not failed.
  r.shown = absl::StrReplaceAll(r.output, {{testing::kSkipMarker, "<the skip marker>"}});
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

TEST(TestMainTest, ASuiteWhoseSetUpFailsFailsAndIsNotMarkedSkipped) {
  const CasesRun r = RunCases("SetUpFails.*");
  EXPECT_NE(r.exit_code, 0) << r.shown;
  EXPECT_EQ(r.output.find(testing::kSkipMarker), std::string::npos) << r.shown;
  EXPECT_NE(r.output.find("[  SKIPPED ]"), std::string::npos)
      << "GoogleTest no longer prints SKIPPED for such a suite; this guard may go\n" << r.shown;
}

TEST(TestMainTest, ATestThatSkipsItselfIsMarked) {
  const CasesRun r = RunCases("SkipsItself.*");
  EXPECT_EQ(r.exit_code, 0) << r.shown;
  EXPECT_NE(r.output.find(std::string(testing::kSkipMarker) + " SkipsItself.NoDevice"), std::string::npos) << r.shown;
}

TEST(TestMainTest, APassingTestIsNotMarked) {
  const CasesRun r = RunCases("Passes.*");
  EXPECT_EQ(r.exit_code, 0) << r.shown;
  EXPECT_EQ(r.output.find(testing::kSkipMarker), std::string::npos) << r.shown;
}

}  // namespace
}  // namespace gemma
