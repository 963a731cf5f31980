// What the OpenAI-compatible API's integration tests share: a worker and a router serving HTTP as "tiny", started
// once per test binary, and a POST that sends JSON.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "gtest/gtest.h"
#include "router/http/test_client.h"
#include "router/router_test_support.h"

namespace gemma {

// A fixture base: a test binary's fixture derives from it and, for a worker or router of its own settings, calls
// StartServers from its own SetUpTestSuite.
class OpenAiRouterTest : public ::testing::Test {
 protected:
  // A worker of `model` with `worker_flags`, and a router in front of it with `router_flags` added (and a metrics
  // port, `with_metrics`). The router's ports are picked free a moment before it binds them: another test's process
  // may take one first, so a router that does not start is tried again on other ports.
  static void StartServers(const std::string& model = GemmaTinyDir() + "/tiny-mqa",
                           const std::vector<std::string>& worker_flags = {},
                           const std::vector<std::string>& router_flags = {}, bool with_metrics = false) {
    worker_ = new OwnWorker(StartOwnWorker(model, worker_flags));
    for (int attempt = 1; attempt <= 3; ++attempt) {
      http_port_ = testing::FreePort();
      std::vector<std::string> flags = router_flags;
      flags.insert(flags.end(), {"--http_port=" + std::to_string(http_port_), "--served_model_name=tiny"});
      if (with_metrics) {
        metrics_port_ = testing::FreePort();
        flags.push_back("--metrics_port=" + std::to_string(metrics_port_));
      }
      router_ = new RouterProcess(StartRouter({worker_->port}, flags));
      if (router_->port > 0 || attempt == 3) break;
      std::fprintf(stderr, "the router did not start (attempt %d of 3); again on other ports. Its log:\n%s\n", attempt,
                   router_->process->Err().c_str());
      delete router_;
      router_ = nullptr;
    }
    ASSERT_GT(router_->port, 0) << router_->process->Err();
    ASSERT_TRUE(router_->WaitForHealthyGroups(1)) << router_->process->Err();
  }
  static void SetUpTestSuite() { StartServers(); }
  static void TearDownTestSuite() {
    if (::testing::UnitTest::GetInstance()->failed_test_count() > 0 && router_ != nullptr) {
      std::fprintf(stderr, "router log:\n%s\n", router_->process->Err().c_str());
    }
    delete router_;
    delete worker_;
    router_ = nullptr;
    worker_ = nullptr;
  }
  static http::testing::HttpReply Post(const std::string& path, const nlohmann::json& body,
                                       const std::vector<std::string>& headers = {}) {
    return http::testing::Call(http_port_, "POST", path, body.dump(), headers);
  }

  static inline OwnWorker* worker_ = nullptr;
  static inline RouterProcess* router_ = nullptr;
  static inline int http_port_ = 0;
  static inline int metrics_port_ = 0;  // with_metrics only
};

}  // namespace gemma
