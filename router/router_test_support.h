// What the router's integration tests share: routers and worker groups started as processes on loopback, and
// small readers of their answers and metrics.
#pragma once

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gemma/v1/gemma.grpc.pb.h"
#include "tests/processes.h"
#include "tests/testdata.h"

namespace gemma {

using testing::GemmaTinyDir;

// A request for `max_new` tokens after the prompt `ids`.
inline v1::GenerateRequest Ids(const std::vector<int>& ids, int max_new) {
  v1::GenerateRequest r;
  for (int id : ids) r.mutable_input()->mutable_token_ids()->add_ids(id);
  r.mutable_parameters()->set_max_new_tokens(max_new);
  return r;
}

inline std::vector<int> TokenIds(const v1::GenerateResponse& r) {
  std::vector<int> out;
  for (const auto& t : r.tokens()) out.push_back(t.id());
  return out;
}

// The value of the first sample of `metric` (a full name with labels as exported), or -1.
inline double Sample(const std::string& metrics, const std::string& metric) {
  const size_t at = metrics.find("\n" + metric);
  if (at == std::string::npos) return -1;
  const size_t space = metrics.find(' ', at + 1 + metric.size());
  return std::stod(metrics.substr(space + 1));
}

// Groups a router can send a request to, as its model info says.
inline int HealthyGroups(v1::Gemma::Stub& stub) {
  v1::ModelInfo info;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  stub.GetModelInfo(&ctx, {}, &info);
  return info.healthy_groups();
}

// A router takes its first group at once and the others a moment later (see LeaseOptions).
inline bool WaitForHealthyGroups(v1::Gemma::Stub& stub, int n) {
  for (int i = 0; i < 200; ++i) {
    if (HealthyGroups(stub) == n) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// A tensor-parallel group of `world` gemma-worker ranks on loopback; `port` is rank 0's Worker API.
struct TpGroup {
  std::vector<std::unique_ptr<testing::Process>> ranks;
  int port = 0;
};

inline TpGroup StartTpGroup(int world) {
  TpGroup g;
  g.port = testing::FreePort();
  const std::string peer = std::to_string(testing::FreePort());
  for (int r = 0; r < world; ++r) {
    // Only rank 0 serves the Worker API (a follower given the same --port would serve health on it).
    g.ranks.push_back(testing::Start(
        WORKER_BINARY, {"--model=" + GemmaTinyDir() + "/tiny-mqa", "--rank=" + std::to_string(r),
                        "--world_size=" + std::to_string(world), "--peer_port=" + peer, "--leader=127.0.0.1:" + peer,
                        "--port=" + std::to_string(r == 0 ? g.port : testing::FreePort()), "--timeout_ms=2000",
                        "--threads=1", "--kv_cache_mb=16"}));
  }
  return g;
}

// A worker of its own, for a test whose router needs settings of its own: each group is scheduled by one router
// at a time, so a second router in front of the suite's worker would only forward to the suite's router.
struct OwnWorker {
  std::unique_ptr<testing::Process> process;
  int port = 0;
};

inline OwnWorker StartOwnWorker(const std::string& model = GemmaTinyDir() + "/tiny-mqa",
                                const std::vector<std::string>& flags = {}) {
  OwnWorker w;
  w.port = testing::FreePort();
  std::vector<std::string> args = {"--model=" + model, "--port=" + std::to_string(w.port), "--threads=1",
                                   "--kv_cache_mb=64", "--group_name=own-group"};
  args.insert(args.end(), flags.begin(), flags.end());
  w.process = testing::Start(WORKER_BINARY, args);
  return w;
}

// A router in front of `groups` (rank 0 addresses), with `flags` added; its public port is 0 if it did not start.
struct RouterProcess {
  std::unique_ptr<testing::Process> process;
  int port = 0;
  std::unique_ptr<v1::Gemma::Stub> stub;
  int HealthyGroups() { return gemma::HealthyGroups(*stub); }
  bool WaitForHealthyGroups(int n) { return gemma::WaitForHealthyGroups(*stub, n); }
};

inline RouterProcess StartRouter(const std::vector<int>& groups, std::vector<std::string> flags = {}) {
  static int n = 0;
  const std::string port_file =
      ::testing::TempDir() + "/router_" + std::to_string(::getpid()) + "_" + std::to_string(n++);
  std::remove(port_file.c_str());
  std::string workers;
  for (int port : groups) workers += (workers.empty() ? "" : ",") + ("127.0.0.1:" + std::to_string(port));
  flags.insert(flags.end(), {"--plaintext", "--workers=" + workers, "--port_file=" + port_file});
  RouterProcess r;
  r.process = testing::Start(ROUTER_BINARY, flags);
  r.port = testing::WaitForPortFile(port_file, std::chrono::seconds(30));
  r.stub = v1::Gemma::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(r.port), grpc::InsecureChannelCredentials()));
  return r;
}

// CPU seconds (user + system) a process has used so far.
inline double CpuSeconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::istringstream fields(stat.substr(stat.rfind(')') + 2));  // the name may hold spaces
  std::string f;
  double ticks = 0;
  for (int i = 3; i <= 15 && fields >> f; ++i) {
    if (i >= 14) ticks += std::stod(f);  // utime, stime
  }
  return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

inline grpc::StatusCode GenerateCode(v1::Gemma::Stub& stub, const v1::GenerateRequest& req) {
  v1::GenerateResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return stub.Generate(&ctx, req, &resp).error_code();
}

}  // namespace gemma
