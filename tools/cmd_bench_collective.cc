// gemma bench-collective: latency of the all-reduce and all-gather sizes a decode step uses, across N local processes.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "tools/local_model.h"
#include "tools/cli_common.h"
#include "tools/commands.h"

namespace gemma {
namespace {

struct Latency {
  std::string op;
  size_t floats;
  double p50_us, p90_us;
};

absl::StatusOr<std::vector<Latency>> Measure(HostCollective& c, const std::vector<size_t>& sizes, int iters) {
  std::vector<Latency> out;
  for (const char* op : {"all_reduce", "all_gather"}) {
    for (size_t n : sizes) {
      std::vector<float> a(n, 1.0f), gathered(n * c.world());
      std::vector<double> us;
      for (int i = 0; i < iters + 5; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        const absl::Status s = std::string(op) == "all_reduce" ? c.AllReduceSum(a.data(), n)
                                                               : c.AllGather(a.data(), n, gathered.data());
        if (!s.ok()) return s;
        if (i >= 5) us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
        std::fill(a.begin(), a.end(), 1.0f);  // keep values bounded
      }
      std::sort(us.begin(), us.end());
      out.push_back({op, n, us[us.size() / 2], us[us.size() * 9 / 10]});
    }
  }
  return out;
}

}  // namespace

int BenchCollectiveCommand(int argc, char** argv) {
  const char* kCmd = "bench-collective";
  Args args(kCmd, "[--world N] [--sizes 2048,3072,...] [--iters K] [--json]");
  args.Flag("world", "processes in the group, 2..16 (default 2)")
      .Flag("sizes", "message sizes in floats (default: hidden of 2B/7B at batch 1 and 8, and a 2B logits slice)")
      .Flag("iters", "timed repetitions per size (default 200)")
      .Flag("transport", "shm (shared memory, default) or gloo (TCP over loopback)")
      .Flag("json", "print one JSON object", true);
  int code;
  if (!ParseOrExit(args, argc, argv, kCmd, &code)) return code;
  auto world = args.GetInt("world", 2, 2, 16);
  auto iters = args.GetInt("iters", 200, 1, 100000);
  auto sizes_arg = args.GetIntList("sizes", 1, 1 << 26);
  for (const absl::Status& s : {world.status(), iters.status(), sizes_arg.status()}) {
    if (!s.ok()) return Fail(kCmd, s);
  }
  const std::string transport = args.Get("transport", "shm");
  if (transport != "shm" && transport != "gloo") {
    return Fail(kCmd, absl::InvalidArgumentError("--transport \"" + transport + "\" is invalid; allowed: shm, gloo"));
  }
  std::vector<size_t> sizes(sizes_arg->begin(), sizes_arg->end());
  if (sizes.empty()) sizes = {2048, 3072, 16384, 24576, 128000};
  char tmpl[] = "/tmp/gemma-bench-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return Fail(kCmd, absl::InternalError("cannot create a rendezvous directory"));
  std::vector<pid_t> children;
  for (int rank = 1; rank < *world; ++rank) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      auto c = LocalCollective(transport, tmpl, rank, static_cast<int>(*world), 30000);
      if (!c.ok()) ::_exit(1);
      ::_exit(Measure(**c, sizes, static_cast<int>(*iters)).ok() ? 0 : 1);
    }
    children.push_back(pid);
  }
  auto c = LocalCollective(transport, tmpl, 0, static_cast<int>(*world), 30000);
  absl::StatusOr<std::vector<Latency>> result = c.ok() ? Measure(**c, sizes, static_cast<int>(*iters)) : c.status();
  for (pid_t pid : children) ::waitpid(pid, nullptr, 0);
  std::error_code ec;
  std::filesystem::remove_all(tmpl, ec);
  if (!result.ok()) return Fail(kCmd, result.status());
  if (args.Has("json")) {
    nlohmann::json out = {{"world", *world}, {"transport", transport}, {"results", nlohmann::json::array()}};
    for (const auto& l : *result) {
      out["results"].push_back({{"op", l.op}, {"floats", l.floats}, {"p50_us", l.p50_us}, {"p90_us", l.p90_us}});
    }
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("%d ranks over %s\n%-11s %10s %10s %10s\n", static_cast<int>(*world), transport.c_str(), "op", "floats",
              "p50 us", "p90 us");
  for (const auto& l : *result) std::printf("%-11s %10zu %10.1f %10.1f\n", l.op.c_str(), l.floats, l.p50_us, l.p90_us);
  return 0;
}

}  // namespace gemma
