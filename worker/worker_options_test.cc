#include "worker/worker_options.h"

#include <cmath>
#include <string>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "gtest/gtest.h"

ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(std::string, device);
ABSL_DECLARE_FLAG(std::string, listen_host);
ABSL_DECLARE_FLAG(std::string, leader);
ABSL_DECLARE_FLAG(int, world_size);
ABSL_DECLARE_FLAG(int, rank);
ABSL_DECLARE_FLAG(int64_t, kv_cache_mb);
ABSL_DECLARE_FLAG(bool, kv_windows);
ABSL_DECLARE_FLAG(double, gpu_memory_fraction);
ABSL_DECLARE_FLAG(int, max_tokens_per_step);
ABSL_DECLARE_FLAG(int, max_batch_size);
ABSL_DECLARE_FLAG(int, max_model_len);
ABSL_DECLARE_FLAG(std::string, weights);
ABSL_DECLARE_FLAG(int32_t, int4_group_size);
ABSL_DECLARE_FLAG(std::string, kv_cache_dtype);
ABSL_DECLARE_FLAG(std::string, activations);

namespace gemma {
namespace {

TEST(WorkerOptionsTest, LeaderOfAGroupWithinAStatefulSet) {
  EXPECT_EQ(*ExpandLeader("{leader}.gemma-worker:29500", "gemma-worker-3", 2), "gemma-worker-2.gemma-worker:29500");
  EXPECT_EQ(*ExpandLeader("{leader}.gemma-worker:29500", "gemma-worker-5", 4), "gemma-worker-4.gemma-worker:29500");
  EXPECT_EQ(*ExpandLeader("{leader}.w:1", "gemma-7b-tp2-1", 2), "gemma-7b-tp2-0.w:1");
  EXPECT_EQ(*ExpandLeader("10.0.0.7:29500", "anything", 2), "10.0.0.7:29500");
  const auto bad = ExpandLeader("{leader}.w:1", "laptop", 2);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("laptop"), std::string::npos);
}

TEST(WorkerOptionsTest, OrdinalFromStatefulSetHostname) {
  EXPECT_EQ(OrdinalFromHostname("gemma-worker-0"), 0);
  EXPECT_EQ(OrdinalFromHostname("gemma-7b-tp2-group-1-3"), 3);
  EXPECT_EQ(OrdinalFromHostname("worker"), -1);
  EXPECT_EQ(OrdinalFromHostname("worker-x"), -1);
}

// Each test sets its flags under a saver, so they do not leak into the next.
class WorkerFlagsTest : public testing::Test {
 protected:
  void SetUp() override { absl::SetFlag(&FLAGS_model, "/models/tiny"); }
  // The message of the refusal, or "" when the flags are accepted.
  static std::string Refusal() {
    auto o = WorkerOptionsFromFlags();
    if (o.ok()) return "";
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(o.status().message());
  }
  absl::FlagSaver saver_;
};

TEST_F(WorkerFlagsTest, StepLimitDefaults) {
  auto o = WorkerOptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->max_tokens_per_step, 2048);
  EXPECT_EQ(o->max_batch_size, 256);
  EXPECT_EQ(o->max_model_len, 0);
  EXPECT_DOUBLE_EQ(o->gpu_memory_fraction, 0.9);
  EXPECT_EQ(o->kv_cache_bytes, 0);
  ShardOptions shard;
  ApplyToShard(*o, shard);
  EXPECT_EQ(shard.limits.max_tokens, 2048);
  EXPECT_EQ(shard.limits.max_sequences, 256);
  EXPECT_EQ(shard.limits.max_context, 0);
  EXPECT_TRUE(shard.kv.windowed);  // sliding-window layers keep only their window unless told otherwise
}

// Every interface by default (a pod's router reaches it by the pod's address); gemma serve keeps it on loopback.
TEST_F(WorkerFlagsTest, ListenHostDefaultsToEveryInterface) {
  auto o = WorkerOptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(ListenAddress(o->listen_host, 50051), "0.0.0.0:50051");
  absl::SetFlag(&FLAGS_listen_host, "127.0.0.1");
  o = WorkerOptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(ListenAddress(o->listen_host, 50051), "127.0.0.1:50051");
}

TEST_F(WorkerFlagsTest, KvWindowsCanBeTurnedOff) {
  absl::SetFlag(&FLAGS_kv_windows, false);
  auto o = WorkerOptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  ShardOptions shard;
  ApplyToShard(*o, shard);
  EXPECT_FALSE(shard.kv.windowed);
}

TEST_F(WorkerFlagsTest, StepLimitsOutOfRangeNameWhatIsAllowed) {
  const struct {
    void (*set)();
    const char* expected;
  } cases[] = {
      {[] { absl::SetFlag(&FLAGS_max_tokens_per_step, 0); }, "--max_tokens_per_step 0 is invalid; allowed: 1..1048576"},
      {[] { absl::SetFlag(&FLAGS_max_tokens_per_step, 1048577); }, "allowed: 1..1048576"},
      {[] { absl::SetFlag(&FLAGS_max_batch_size, 0); }, "--max_batch_size 0 is invalid; allowed: 1..65536"},
      {[] { absl::SetFlag(&FLAGS_max_batch_size, 65537); }, "allowed: 1..65536"},
      {[] { absl::SetFlag(&FLAGS_max_model_len, -1); }, "--max_model_len -1 is invalid; allowed: 0"},
      {[] { absl::SetFlag(&FLAGS_gpu_memory_fraction, 0.0); }, "--gpu_memory_fraction 0 is invalid"},
      {[] { absl::SetFlag(&FLAGS_gpu_memory_fraction, 1.5); }, "allowed: more than 0, at most 1"},
      {[] { absl::SetFlag(&FLAGS_gpu_memory_fraction, std::nan("")); }, "--gpu_memory_fraction"},
      {[] { absl::SetFlag(&FLAGS_kv_cache_mb, -1); }, "--kv_cache_mb -1 is invalid; allowed: 1..16777216"},
      {[] { absl::SetFlag(&FLAGS_listen_host, ""); }, "--listen_host \"\" is invalid; allowed: 0.0.0.0 (every"},
      {[] { absl::SetFlag(&FLAGS_listen_host, "10.0.0.5"); }, "--listen_host \"10.0.0.5\" is invalid"},
      {[] { absl::SetFlag(&FLAGS_listen_host, "::"); }, "allowed: 0.0.0.0 (every interface), 127.0.0.1"},
      {[] {
         absl::SetFlag(&FLAGS_listen_host, "127.0.0.1");
         absl::SetFlag(&FLAGS_world_size, 2);
         absl::SetFlag(&FLAGS_rank, 1);
         absl::SetFlag(&FLAGS_leader, "10.0.0.1:29500");
       },
       "--listen_host 127.0.0.1 keeps the rendezvous to this machine, but the leader is 10.0.0.1:29500"},
      {[] { absl::SetFlag(&FLAGS_weights, "q4_0"); }, "--weights \"q4_0\" is not a weight precision; allowed: bf16, int8"},
      {[] { absl::SetFlag(&FLAGS_int4_group_size, 100); }, "--int4_group_size 100 is invalid; allowed: 32, 64, 128"},
      {[] { absl::SetFlag(&FLAGS_kv_cache_dtype, "q8"); },
       "--kv_cache_dtype \"q8\" is not a KV cache dtype; allowed: auto, f32, bf16, int8, fp8"},
      {[] { absl::SetFlag(&FLAGS_activations, "int4"); }, "--activations \"int4\" is invalid; allowed: f32, bf16, int8"},
  };
  for (const auto& c : cases) {
    absl::FlagSaver each;
    c.set();
    EXPECT_NE(Refusal().find(c.expected), std::string::npos) << Refusal();
  }
  absl::SetFlag(&FLAGS_max_tokens_per_step, 1048576);
  absl::SetFlag(&FLAGS_max_batch_size, 1);
  absl::SetFlag(&FLAGS_max_model_len, 100000000);  // more than the model's context: the model's (Resolved)
  absl::SetFlag(&FLAGS_gpu_memory_fraction, 1.0);
  EXPECT_EQ(Refusal(), "");
}

TEST_F(WorkerFlagsTest, CpuKeepsItsGibibyteByDefault) {
  auto o = WorkerOptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  ShardOptions shard;
  ApplyToShard(*o, shard);
  EXPECT_EQ(shard.kv.max_bytes, int64_t{1} << 30);
  EXPECT_EQ(shard.kv.memory_fraction, 0);  // the CPU never plans from a device's memory
  EXPECT_EQ(shard.kv.dtype, KvCacheDtype::kAuto);
  absl::SetFlag(&FLAGS_kv_cache_dtype, "int8");
  o = WorkerOptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  ApplyToShard(*o, shard);
  EXPECT_EQ(shard.kv.dtype, KvCacheDtype::kInt8);
}

TEST_F(WorkerFlagsTest, CudaPlansFromTheFractionUnlessTheSizeIsGiven) {
  absl::SetFlag(&FLAGS_device, "cuda");
  absl::SetFlag(&FLAGS_gpu_memory_fraction, 0.8);
  auto o = WorkerOptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  ShardOptions shard;
  ApplyToShard(*o, shard);
  EXPECT_DOUBLE_EQ(shard.kv.memory_fraction, 0.8);

  absl::SetFlag(&FLAGS_kv_cache_mb, 2048);
  o = WorkerOptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  shard = ShardOptions{};
  ApplyToShard(*o, shard);
  EXPECT_EQ(shard.kv.memory_fraction, 0);
  EXPECT_EQ(shard.kv.max_bytes, int64_t{2048} << 20);
}

}  // namespace
}  // namespace gemma
