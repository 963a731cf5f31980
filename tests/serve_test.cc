// gemma serve and gemma client as a user runs them: a local cluster answers, Ctrl-C stops every process, and a
// worker that dies takes the cluster down with a clear message.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "router/http/test_client.h"
#include "tests/processes.h"
#include "tests/testdata.h"

namespace gemma::testing {
namespace {

// Starts `gemma serve`, waits for its "listening on" line; returns the router address as localhost:PORT (the name
// the test certificate is for).
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
  const std::regex listening("listening on [0-9.]+:([0-9]+)");
  for (int i = 0; i < 600; ++i) {
    std::smatch m;
    const std::string text = ReadFile(out);
    if (std::regex_search(text, m, listening)) return "localhost:" + m[1].str();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return "";
}

int Children(pid_t parent) {
  std::string list = ReadFile("/proc/" + std::to_string(parent) + "/task/" + std::to_string(parent) + "/children");
  return static_cast<int>(std::count(list.begin(), list.end(), ' '));
}

// The addresses TCP sockets of `parent` and its children listen on ("127.0.0.1", IPv4-mapped too, "0.0.0.0",
// "::1", "::", or the kernel's hex for others), from /proc.
std::vector<std::string> ListeningAddresses(pid_t parent) {
  std::vector<std::string> pids = {std::to_string(parent)};
  std::istringstream children(ReadFile("/proc/" + pids[0] + "/task/" + pids[0] + "/children"));
  for (std::string child; children >> child;) pids.push_back(child);
  std::set<std::string> inodes;
  for (const std::string& pid : pids) {
    std::error_code ec;
    for (const auto& fd : std::filesystem::directory_iterator("/proc/" + pid + "/fd", ec)) {
      const std::string target = std::filesystem::read_symlink(fd.path(), ec).string();
      if (target.rfind("socket:[", 0) == 0) inodes.insert(target.substr(8, target.size() - 9));
    }
  }
  std::vector<std::string> addresses;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::istringstream lines(ReadFile(table));
    std::string line;
    std::getline(lines, line);  // the header
    while (std::getline(lines, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state, skip, inode;
      fields >> slot >> local >> remote >> state;
      for (int i = 0; i < 5; ++i) fields >> skip;  // tx/rx queues, timer, retransmits, uid, timeout
      fields >> inode;
      if (state != "0A" || !inodes.count(inode)) continue;  // 0A: LISTEN
      const std::string host = local.substr(0, local.find(':'));
      if (host == "0100007F" || host == "0000000000000000FFFF00000100007F") addresses.push_back("127.0.0.1");
      else if (host == "00000000") addresses.push_back("0.0.0.0");
      else if (host == "00000000000000000000000001000000") addresses.push_back("::1");
      else if (host == "00000000000000000000000000000000") addresses.push_back("::");
      else addresses.push_back(host);
    }
  }
  return addresses;
}

TEST(ServeTest, LocalClusterAnswersAndStopsOnInterrupt) {
  const std::string out = ::testing::TempDir() + "/serve_" + std::to_string(::getpid()) + ".out";
  Process serve;
  const int metrics_port = FreePort();
  const std::string address = StartServe(serve,
                                         {"--model=" + GemmaTinyDir() + "/tiny-mqa", "--tp=2", "--kv-cache-mb=32",
                                          "--metrics-port=" + std::to_string(metrics_port)},
                                         out);
  ASSERT_FALSE(address.empty()) << ReadFile(out);
  EXPECT_EQ(Children(serve.pid), 3);  // two ranks and the router
  // The router's metrics, on loopback like the rest (checked below with every listening socket).
  const http::testing::HttpReply metrics = http::testing::Call(metrics_port, "GET", "/metrics");
  EXPECT_EQ(metrics.status, 200) << metrics.head;
  EXPECT_NE(metrics.body.find("gemma_router_"), std::string::npos) << metrics.body.substr(0, 500);
  // Without TLS nothing of the cluster is reachable from another machine: not the router, not the workers' API
  // (which takes no key), not their rendezvous or collectives.
  const std::vector<std::string> listening = ListeningAddresses(serve.pid);
  EXPECT_GE(listening.size(), 3u);  // the router's gRPC, the leader's Worker API and its rendezvous at least
  for (const std::string& a : listening) EXPECT_TRUE(a == "127.0.0.1" || a == "::1") << "a socket listens on " << a;
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

// Ctrl-C drains the cluster: a request streaming at that moment gets all its tokens, not a broken stream. The
// tiny model's longest request takes about a second, inside even the old 2 s budget, so this guards the drain
// path as a whole rather than the length of the budget.
TEST(ServeTest, InterruptLetsARunningRequestFinish) {
  const std::string out = ::testing::TempDir() + "/serve_drain_" + std::to_string(::getpid()) + ".out";
  Process serve;
  const std::string address = StartServe(serve, {"--model=" + GemmaTinyDir() + "/tiny-mqa", "--kv-cache-mb=32"}, out);
  ASSERT_FALSE(address.empty()) << ReadFile(out);
  const std::string reply = ::testing::TempDir() + "/serve_drain_reply_" + std::to_string(::getpid());
  std::remove(reply.c_str());
  // The longest generation the tiny model allows (512 positions).
  const std::string cmd = std::string(GEMMA_BINARY) + " client stream --server " + address +
                          " --prompt-ids 2,3791,323 --max-new-tokens 509 --json > " + reply;
  int client_exit = -1;
  std::thread client([&] { client_exit = std::system(cmd.c_str()); });
  for (int i = 0; i < 6000 && ReadFile(reply).empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const bool streaming = !ReadFile(reply).empty();
  ::kill(serve.pid, SIGINT);
  client.join();  // before any assertion can return: a joinable thread's destructor would end the test binary
  ASSERT_TRUE(streaming) << "no token streamed within 30 s";
  EXPECT_EQ(client_exit, 0) << ReadFile(reply);
  EXPECT_NE(ReadFile(reply).find("{\"finish_reason\":\"length\"}"), std::string::npos) << ReadFile(reply);
  EXPECT_EQ(serve.WaitExit(std::chrono::seconds(20)), 0);
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

// gemma serve killed outright (it cannot stop its children itself) still takes its cluster with it.
TEST(ServeTest, AKilledServeTakesItsClusterWithIt) {
  const std::string out = ::testing::TempDir() + "/serve_killed_" + std::to_string(::getpid()) + ".out";
  Process serve;
  const std::string address =
      StartServe(serve, {"--model=" + GemmaTinyDir() + "/tiny-mqa", "--tp=2", "--kv-cache-mb=32"}, out);
  ASSERT_FALSE(address.empty()) << ReadFile(out);
  std::istringstream list(
      ReadFile("/proc/" + std::to_string(serve.pid) + "/task/" + std::to_string(serve.pid) + "/children"));
  std::vector<pid_t> children;
  for (pid_t child; list >> child;) children.push_back(child);
  ASSERT_EQ(children.size(), 3u);
  ::kill(serve.pid, SIGKILL);
  serve.WaitExit(std::chrono::seconds(5));
  for (pid_t child : children) {
    bool gone = false;
    // A child that is gone, or a zombie its new parent has yet to reap.
    for (int i = 0; i < 300 && !gone; ++i) {
      const std::string stat = ReadFile("/proc/" + std::to_string(child) + "/stat");
      gone = stat.empty() || stat.find(") Z ") != std::string::npos;
      if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_TRUE(gone) << "child " << child << " outlived gemma serve by 15 s";
    if (!gone) ::kill(child, SIGKILL);
  }
}

// Where no GPU is, asking for one stops the cluster with the worker's reason; a device name it does not know is
// refused at once.
TEST(ServeTest, DeviceChoiceErrorsAreClear) {
  const std::string out = ::testing::TempDir() + "/serve_device_" + std::to_string(::getpid());
  const std::string gemma = GEMMA_BINARY;
  EXPECT_EQ(WEXITSTATUS(std::system((gemma + " serve --device tpu 2> " + out).c_str())), 2);
  EXPECT_NE(ReadFile(out).find("allowed: cpu, cuda"), std::string::npos) << ReadFile(out);
  for (const char* fraction : {"0", "1.5"}) {
    EXPECT_EQ(WEXITSTATUS(std::system((gemma + " serve --gpu-memory-fraction " + fraction + " 2> " + out).c_str())), 2);
    EXPECT_NE(ReadFile(out).find("--gpu-memory-fraction"), std::string::npos) << ReadFile(out);
  }
  const int code = WEXITSTATUS(std::system(
      ("timeout 60 " + gemma + " serve --model " + GemmaTinyDir() + "/tiny-mqa --device cuda --kv-cache-mb 16 > " +
       out + ".out 2> " + out)
          .c_str()));
  const std::string err = ReadFile(out);
  if (ReadFile(out + ".out").find("listening on") != std::string::npos) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_EQ(code, 1);
  EXPECT_TRUE(err.find("--device cuda: this process sees no CUDA device") != std::string::npos ||
              err.find("--device cuda: this build has no CUDA backend module") != std::string::npos)
      << err;
}

// The cluster over TLS with API keys, reached by `gemma client` and loaded by `gemma bench --server`.
TEST(ServeTest, TlsAndApiKeysThroughClientAndLoadGenerator) {
  const std::string dir = ::testing::TempDir() + "/serve_tls_" + std::to_string(::getpid());
  ASSERT_EQ(std::system(("mkdir -p " + dir + " && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                         "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " + dir + "/key.pem -out " + dir +
                         "/cert.pem 2>/dev/null").c_str()), 0) << "openssl makes the test certificate";
  std::ofstream(dir + "/keys") << "k-one\n";
  Process serve;
  const std::string address =
      StartServe(serve, {"--model=" + GemmaTinyDir() + "/tiny-mqa", "--kv-cache-mb=32", "--tls-cert=" + dir + "/cert.pem",
                         "--tls-key=" + dir + "/key.pem", "--api-keys-file=" + dir + "/keys"}, dir + "/serve.out");
  ASSERT_FALSE(address.empty()) << ReadFile(dir + "/serve.out");
  EXPECT_NE(ReadFile(dir + "/serve.out").find("TLS"), std::string::npos);
  const std::string client = std::string(GEMMA_BINARY) + " client generate --server " + address + " --tls-ca " + dir +
                             "/cert.pem --prompt-ids 2,3791,323 --max-new-tokens 4 --json";
  EXPECT_EQ(std::system(("GEMMA_API_KEY=k-one " + client + " > " + dir + "/ok.json").c_str()), 0);
  EXPECT_EQ(nlohmann::json::parse(ReadFile(dir + "/ok.json"))["token_ids"].size(), 4u);
  EXPECT_NE(std::system(("env -u GEMMA_API_KEY " + client + " 2> " + dir + "/denied.err").c_str()), 0);
  EXPECT_NE(ReadFile(dir + "/denied.err").find("API key"), std::string::npos) << ReadFile(dir + "/denied.err");

  const std::string bench = std::string(GEMMA_BINARY) + " bench --server " + address + " --tls-ca " + dir +
                            "/cert.pem --api-key-file " + dir + "/keys --concurrency 1,3 --requests 3 "
                            "--prompt-tokens 8 --max-new-tokens 4 --json > " + dir + "/bench.json 2>/dev/null";
  ASSERT_EQ(std::system(bench.c_str()), 0);
  const auto result = nlohmann::json::parse(ReadFile(dir + "/bench.json"));
  ASSERT_EQ(result["levels"].size(), 2u);
  for (const auto& level : result["levels"]) {
    EXPECT_EQ(level["ok"].get<int>(), 3);
    EXPECT_EQ(level["generated_tokens"].get<int>(), 12) << "3 requests x 4 tokens each, <eos> or not";
    EXPECT_GT(level["tokens_per_s"].get<double>(), 0);
    EXPECT_GT(level["ttft_s"]["p50"].get<double>(), 0);
    EXPECT_LE(level["ttft_s"]["p50"].get<double>(), level["e2e_s"]["p99"].get<double>());
  }
  ::kill(serve.pid, SIGINT);
  EXPECT_EQ(serve.WaitExit(std::chrono::seconds(15)), 0);
}

}  // namespace
}  // namespace gemma::testing
