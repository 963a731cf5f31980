// Tensor parallelism on the CPU for Gemma 2 and 3: a group of 2, 4 or 8 ranks (threads over shared memory, KV heads
// replicated where there are fewer than ranks, query heads too at 8) gives the logits of one rank, for a prompt past the sliding window
// and the decode steps after it. Tolerance: the model README's (1e-4; 1e-3 for tiny-g2-qscale); rank order of the
// all-reduce sums differs from one rank's matmul only by float32 rounding.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "shard/checkpoint/checkpoint.h"
#include "shard/collective/shm_collective.h"
#include "shard/cpu/cpu_backend.h"
#include "shard/model/model_weights.h"
#include "tests/reference_helpers.h"
#include "tests/testdata.h"

namespace gemma {
namespace {

using testing::TinyModel;

struct Case {
  TinyModel model;
  int world;
};

// Runs the prompt (all rows) and then three decode steps on rank `rank` of `world`; rank 0's logits, in order.
absl::Status RunRank(std::shared_ptr<const Checkpoint> ckpt, int rank, int world, const std::string& group,
                     const std::vector<int32_t>& prompt, std::vector<float>* logits) {
  ASSIGN_OR_RETURN(const TensorParallel tp, TensorParallel::Create(ckpt->config(), rank, world));
  ASSIGN_OR_RETURN(auto weights, ModelWeights::Load(ckpt, tp));
  std::shared_ptr<HostCollective> collective;
  if (world > 1) {
    ASSIGN_OR_RETURN(collective, CreateShmCollective({rank, world, group, std::chrono::milliseconds(30000)}));
  }
  KvCacheOptions kv;
  kv.num_blocks = 32;
  ASSIGN_OR_RETURN(auto backend, CpuBackend::Create(std::move(weights), kv, collective));
  std::vector<int32_t> blocks(kv.num_blocks);
  std::iota(blocks.begin(), blocks.end(), 0);
  StepLogits out;
  SequenceStep step{prompt, 0, blocks, LogitsWanted::kAll};
  RETURN_IF_ERROR(backend->Forward({&step, 1}, &out));
  logits->insert(logits->end(), out.values.begin(), out.values.end());
  for (int i = 0; i < 3; ++i) {
    const int32_t token = prompt[i + 5];
    SequenceStep decode{{&token, 1}, static_cast<int32_t>(prompt.size()) + i, blocks, LogitsWanted::kLast};
    RETURN_IF_ERROR(backend->Forward({&decode, 1}, &out));
    logits->insert(logits->end(), out.values.begin(), out.values.end());
  }
  return absl::OkStatus();
}

class TensorParallelCpuTest : public ::testing::TestWithParam<Case> {};

TEST_P(TensorParallelCpuTest, AGroupGivesTheLogitsOfOneRank) {
  const Case& c = GetParam();
  const std::string root = c.model.root();
  ASSERT_FALSE(root.empty()) << "test data for " << c.model.name << " is absent";
  auto opened = Checkpoint::Open(root + "/" + c.model.name);
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::shared_ptr<const Checkpoint> ckpt(std::move(*opened));
  auto all = nlohmann::json::parse(testing::ReadFile(root + "/reference/" + c.model.reference + "/logits_rand200.json"))["ids"]
                 .get<std::vector<int32_t>>();
  const std::vector<int32_t> prompt(all.begin(), all.begin() + 40);  // 2.5 windows of 16

  std::vector<float> one;
  ASSERT_TRUE(RunRank(ckpt, 0, 1, "", prompt, &one).ok());
  static int groups = 0;
  // Pids come back across the suite's processes: a random part keeps this group's name its own.
  static const uint32_t salt = std::random_device{}();
  const std::string group = absl::StrCat("tp_cpu_", ::getpid(), "_", salt, "_", groups++);
  std::vector<std::vector<float>> logits(c.world);
  std::vector<absl::Status> status(c.world);
  std::vector<std::thread> ranks;
  for (int r = 0; r < c.world; ++r) {
    ranks.emplace_back([&, r] { status[r] = RunRank(ckpt, r, c.world, group, prompt, &logits[r]); });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < c.world; ++r) ASSERT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r];
  ASSERT_EQ(logits[0].size(), one.size());
  double worst = 0;
  for (size_t i = 0; i < one.size(); ++i) worst = std::max(worst, std::abs(double(logits[0][i]) - one[i]));
  EXPECT_LT(worst, c.model.tolerance);
  RecordProperty("max_abs_logit_diff", absl::StrCat(worst));
  // Every rank returns the same logits: the gather and the sums run in rank order.
  for (int r = 1; r < c.world; ++r) EXPECT_EQ(logits[r], logits[0]) << "rank " << r;
}

std::vector<Case> Cases() {
  std::vector<Case> out;
  for (const auto& m : testing::Gemma23TinyModels()) {
    // 8 ranks over 4 query heads: each head computed by two ranks, its output added by one.
    for (int world : {2, 4, 8}) out.push_back({m, world});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Gemma23, TensorParallelCpuTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           std::string n = absl::StrCat(info.param.model.name, "_tp", info.param.world);
                           for (char& ch : n) ch = std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
                           return n;
                         });

}  // namespace
}  // namespace gemma
