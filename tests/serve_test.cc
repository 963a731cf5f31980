// gemma serve and gemma client as a user runs them: a local cluster answers, Ctrl-C stops every process, and a
// worker that dies takes the cluster down with a clear message.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <regex>
#include <thread>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/processes.h"
#include "tests/testdata.h"

namespace gemma::testing {
namespace {

// Starts `gemma serve`, waits for its "listening on" line; returns the router address.
std::string StartServe(Process& serve, const std::vector<std::string>& args, const std::string& out) {
  serve.pid = ::fork();
  if (serve.pid == 0) {
    std::freopen(out.c_str(), "w", stdout);
    std::vector<char*> argv = {const_cast<char*>(GEMMA_BINARY), const_cast<char*>("serve")};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(GEMMA_BINARY, argv.data());
    ::_exit(127);
  }
  const std::regex listening("listening on (127\\.0\\.0\\.1:[0-9]+)");
  for (int i = 0; i < 600; ++i) {
    std::smatch m;
    const std::string text = ReadFile(out);
    if (std::regex_search(text, m, listening)) return m[1];
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return "";
}

int Children(pid_t parent) {
  std::string list = ReadFile("/proc/" + std::to_string(parent) + "/task/" + std::to_string(parent) + "/children");
  return static_cast<int>(std::count(list.begin(), list.end(), ' '));
}

TEST(ServeTest, LocalClusterAnswersAndStopsOnInterrupt) {
  const std::string out = ::testing::TempDir() + "/serve_" + std::to_string(::getpid()) + ".out";
  Process serve;
  const std::string address =
      StartServe(serve, {"--model=" + GemmaTinyDir() + "/tiny-mqa", "--tp=2", "--kv-cache-mb=32"}, out);
  ASSERT_FALSE(address.empty()) << ReadFile(out);
  EXPECT_EQ(Children(serve.pid), 3);  // two ranks and the router
  const std::string reply = ::testing::TempDir() + "/serve_reply_" + std::to_string(::getpid());
  const std::string cmd = std::string(GEMMA_BINARY) + " client generate --server " + address +
                          " --prompt-ids 2,3791,323 --max-new-tokens 32 --json > " + reply;
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  const auto ref = nlohmann::json::parse(ReadFile(GemmaTinyDir() + "/reference/tiny-mqa/generations.json"));
  const auto got = nlohmann::json::parse(ReadFile(reply));
  const auto want = ref["results"][0]["generated_ids"].get<std::vector<int>>();
  const auto ids = got["token_ids"].get<std::vector<int>>();
  ASSERT_EQ(ids.size(), 32u);
  const size_t compare = ref["results"][0]["first_step_with_margin_below_1e-3"].get<size_t>();
  EXPECT_TRUE(std::equal(want.begin(), want.begin() + compare, ids.begin()));
  ::kill(serve.pid, SIGINT);
  EXPECT_EQ(serve.WaitExit(std::chrono::seconds(15)), 0);
}

TEST(ServeTest, AWorkerThatDiesStopsTheClusterWithAMessage) {
  const std::string out = ::testing::TempDir() + "/serve_die_" + std::to_string(::getpid()) + ".out";
  Process serve;
  const std::string address = StartServe(serve, {"--model=" + GemmaTinyDir() + "/tiny-mha", "--kv-cache-mb=32"}, out);
  ASSERT_FALSE(address.empty());
  std::string list = ReadFile("/proc/" + std::to_string(serve.pid) + "/task/" + std::to_string(serve.pid) + "/children");
  const pid_t worker = std::atoi(list.c_str());  // the first child is the worker
  ASSERT_GT(worker, 0);
  ::kill(worker, SIGKILL);
  EXPECT_EQ(serve.WaitExit(std::chrono::seconds(15)), 1);
}

}  // namespace
}  // namespace gemma::testing
