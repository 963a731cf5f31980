// What the OpenAI-compatible API's integration tests share: a worker and a router serving HTTP as "tiny", started
// once per test binary, and a POST that sends JSON.
#pragma once

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
  // A worker of `model` with `worker_flags`, and a router in front of it with `router_flags` added.
  static void StartServers(const std::string& model = GemmaTinyDir() + "/tiny-mqa",
                           const std::vector<std::string>& worker_flags = {},
                           std::vector<std::string> router_flags = {}) {
    worker_ = new OwnWorker(StartOwnWorker(model, worker_flags));
    http_port_ = testing::FreePort();
    router_flags.insert(router_flags.end(),
                        {"--http_port=" + std::to_string(http_port_), "--served_model_name=tiny"});
    router_ = new RouterProcess(StartRouter({worker_->port}, router_flags));
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
};

}  // namespace gemma
