// The router's metrics, read from its Prometheus endpoint while a real gRPC client drives it: cancelled streams
// free their KV blocks and are counted; finish reasons, prompt and generated tokens per request and per step,
// prefill time, the build and group names; a repeated prefix served from the prefix cache with the same tokens.
#include <algorithm>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "router/router_test_fixture.h"

namespace gemma {
namespace {

TEST_F(RouterTest, CancelledStreamsFreeTheirKvBlocksAndAreCounted) {
  v1::GenerateRequest req;
  req.mutable_input()->set_text("A long story begins");
  req.mutable_parameters()->set_max_new_tokens(400);
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext ctx;
    auto reader = Client()->GenerateStream(&ctx, req);
    v1::GenerateStreamResponse event;
    ASSERT_TRUE(reader->Read(&event));  // running: it holds KV blocks
    ctx.TryCancel();
    while (reader->Read(&event)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  const std::string kv = "gemma_router_kv_blocks_used{group=\"router-test-group\"}";
  double used = -1, cancelled = -1;
  for (int i = 0; i < 100 && (used != 0 || cancelled < 3); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const std::string m = testing::HttpGet(metrics_port_, "/metrics");
    used = Sample(m, kv);
    cancelled = Sample(m, "gemma_router_requests_total{code=\"CANCELLED\",endpoint=\"GenerateStream\",outcome=\"cancelled\",protocol=\"grpc\"}");
  }
  EXPECT_EQ(used, 0) << "KV blocks still held after cancellation";
  EXPECT_GE(cancelled, 3);
  const std::string m = testing::HttpGet(metrics_port_, "/metrics");
  EXPECT_GE(Sample(m, "gemma_router_requests_finished_total{reason=\"cancelled\"}"), 3);
  for (const char* name : {"gemma_router_time_to_first_token_seconds_count", "gemma_router_inter_token_latency_seconds_count",
                           "gemma_router_request_duration_seconds_count", "gemma_router_queue_duration_seconds_count",
                           "gemma_router_queue_depth", "gemma_router_running_sequences", "gemma_router_kv_cache_usage_ratio",
                           "gemma_router_generated_tokens_total", "gemma_router_prompt_tokens_total",
                           "gemma_router_preemptions_total", "gemma_router_group_healthy"}) {
    EXPECT_NE(m.find(name), std::string::npos) << name;
  }
}

// Per request: how it ended, its prompt and generated tokens, its prefill time; per step: its tokens; per process:
// its build; groups labelled by their name, not their address.
TEST_F(RouterTest, MetricsCountFinishReasonsTokensPerRequestAndStepAndPrefillTime) {
  auto scrape = [&] { return testing::HttpGet(metrics_port_, "/metrics"); };
  const std::string before = scrape();
  auto delta = [&](const std::string& after, const std::string& name) {
    return std::max(0.0, Sample(after, name)) - std::max(0.0, Sample(before, name));
  };
  v1::GenerateResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(Client()->Generate(&ctx, Ids({2, 3791, 323, 4}, 5), &resp).ok());
  const std::string reason = resp.finish_reason() == v1::FINISH_REASON_EOS ? "eos" : "length";
  const double generated = resp.tokens_size();
  std::string m;
  // The request's metrics are recorded as it ends, just before it answers; the last step's may come a moment
  // after the answer (seen under load: one step short).
  for (int i = 0; i < 40; ++i) {
    m = scrape();
    if (delta(m, "gemma_router_requests_finished_total{reason=\"" + reason + "\"}") >= 1 &&
        delta(m, "gemma_router_step_tokens_count") >= generated) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  EXPECT_EQ(delta(m, "gemma_router_requests_finished_total{reason=\"" + reason + "\"}"), 1) << m;
  EXPECT_EQ(delta(m, "gemma_router_prompt_tokens_count"), 1);
  EXPECT_EQ(delta(m, "gemma_router_prompt_tokens_sum"), 4);
  EXPECT_EQ(delta(m, "gemma_router_generated_tokens_count"), 1);
  EXPECT_EQ(delta(m, "gemma_router_generated_tokens_sum"), generated);
  EXPECT_EQ(delta(m, "gemma_router_prefill_duration_seconds_count"), 1);
  EXPECT_GT(delta(m, "gemma_router_prefill_duration_seconds_sum"), 0);
  // A prefill step of 4 positions, then a step of one token for each further token.
  EXPECT_GE(delta(m, "gemma_router_step_tokens_count"), generated);
  EXPECT_GE(delta(m, "gemma_router_step_tokens_sum"), 4 + generated - 1);
  EXPECT_NE(m.find("gemma_build_info{protocol=\"6\",version=\""), std::string::npos);
  EXPECT_EQ(Sample(m, "gemma_router_group_healthy{group=\"router-test-group\"}"), 1) << m;
  EXPECT_EQ(m.find("gemma_router_group_healthy{group=\"127.0.0.1:"), std::string::npos);
}

TEST_F(RouterTest, ARepeatedPrefixIsServedFromTheCacheWithTheSameTokens) {
  // A prompt of 7 full blocks and 4 positions, found in no other test's cache.
  std::vector<int> prompt = {2};
  for (int i = 1; i < 116; ++i) prompt.push_back(1000 + (i * 37) % 3000);
  auto metric = [&](const std::string& name) { return Sample(testing::HttpGet(metrics_port_, "/metrics"), name); };
  // Metrics are published after each step, a moment after the reply: poll until settled.
  auto settled = [&](const std::string& name, double expected) {
    double v = metric(name);
    for (int i = 0; i < 40 && v != expected; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      v = metric(name);
    }
    return v;
  };
  auto generate = [&](const std::vector<int>& ids) {
    grpc::ClientContext ctx;
    v1::GenerateResponse resp;
    EXPECT_TRUE(Client()->Generate(&ctx, Ids(ids, 8), &resp).ok());
    return TokenIds(resp);
  };
  const auto cold = generate(prompt);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const double hits = metric("gemma_router_prefix_cache_hits_total");
  const double prefilled = metric("gemma_router_prefill_tokens_total");
  EXPECT_EQ(generate(prompt), cold);
  // The same 7 blocks (112 positions) are reused; only the last 4 prompt positions are computed again.
  EXPECT_EQ(settled("gemma_router_prefix_cache_hits_total", hits + 112), hits + 112);
  EXPECT_EQ(settled("gemma_router_prefill_tokens_total", prefilled + 4), prefilled + 4);
  EXPECT_GT(metric("gemma_router_prefix_cache_blocks{group=\"router-test-group\"}"), 0);
  // A prompt that shares the first blocks and then departs reuses only those.
  auto other = prompt;
  other[40] = 7;  // in the third block
  const double before = metric("gemma_router_prefix_cache_hits_total");
  generate(other);
  EXPECT_EQ(settled("gemma_router_prefix_cache_hits_total", before + 32), before + 32);
}

}  // namespace
}  // namespace gemma
