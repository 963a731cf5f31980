// What only the shared-memory transport can get wrong: the segment's name in /dev/shm, and peers that are
// processes whose end the others must notice.
#include "shard/collective/shm_collective.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace gemma {
namespace {

using std::chrono::milliseconds;

std::string Group(const char* what) { return std::string("shm_test_") + what + "_" + std::to_string(::getpid()); }

// The /dev/shm entries whose names hold `group`.
std::vector<std::string> Segments(const std::string& group) {
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm", ec)) {
    if (e.path().filename().string().find(group) != std::string::npos) found.push_back(e.path().string());
  }
  return found;
}

// A join whose peer never comes leaves no segment behind (each was 16 MiB or more, and they piled up).
TEST(ShmCollectiveTest, AFailedJoinLeavesNoSegment) {
  const std::string group = Group("join");
  auto m = CreateShmCollective({0, 2, group, milliseconds(300)});
  EXPECT_FALSE(m.ok());
  const std::vector<std::string> left = Segments(group);
  EXPECT_TRUE(left.empty()) << left.front();
}

// A peer killed while the others wait is noticed at once, also while it is a zombie that its parent (the rank
// waiting) has not reaped, rather than after the whole timeout.
TEST(ShmCollectiveTest, AKilledPeerIsNoticedBeforeTheTimeout) {
  const std::string group = Group("killed");
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto m = CreateShmCollective({1, 2, group, milliseconds(20000)});
    if (!m.ok()) ::_exit(1);
    ::pause();  // joined; killed here
    ::_exit(0);
  }
  auto m = CreateShmCollective({0, 2, group, milliseconds(20000)});
  ASSERT_TRUE(m.ok()) << m.status();
  ::kill(child, SIGKILL);
  std::vector<float> data(8, 1.0f);
  const auto start = std::chrono::steady_clock::now();
  const absl::Status s = (*m)->AllReduceSum(data.data(), data.size());
  const auto took = std::chrono::steady_clock::now() - start;
  ::waitpid(child, nullptr, 0);
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_NE(s.message().find("has exited"), std::string::npos) << s;
  EXPECT_LT(took, std::chrono::seconds(5)) << "the 20 s timeout ran out first";
}

}  // namespace
}  // namespace gemma
