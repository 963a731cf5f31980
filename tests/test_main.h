// What tests/test_main.cc prints for a test that skipped itself; CMake's SKIP_REGULAR_EXPRESSION matches it.
#pragma once

namespace gemma::testing {

inline constexpr char kSkipMarker[] = "GEMMA_TEST_SKIPPED:";

}  // namespace gemma::testing
