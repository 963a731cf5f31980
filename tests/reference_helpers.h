// Loading tiny checkpoints and their reference outputs for the engine tests.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "shard/cpu/cpu_backend.h"
#include "shard/runtime/adapter_store.h"
#include "engine/run_batch.h"
#include "tests/testdata.h"

namespace gemma::testing {

struct TinyModel {
  std::string name;        // checkpoint folder
  std::string reference;   // reference folder (the sharded copy uses tiny-mqa's)
  std::string (*root)() = GemmaTinyDir;  // the test data folder holding both
  double tolerance = 1e-4;  // on logits and log-probs: the model README's
};
inline const std::vector<TinyModel>& TinyModels() {
  static const std::vector<TinyModel> models = {
      {"tiny-mha", "tiny-mha"}, {"tiny-mqa", "tiny-mqa"}, {"tiny-mqa-sharded", "tiny-mqa"},
      {"tiny-mha-hd48", "tiny-mha-hd48"}};
  return models;
}
// Gemma 2 and 3; tiny-g2-qscale's soft-capped, sharp attention amplifies float32 rounding (its README: 1e-3).
inline const std::vector<TinyModel>& Gemma23TinyModels() {
  static const std::vector<TinyModel> models = {{"tiny-g2", "tiny-g2", Gemma2TinyDir},
                                                {"tiny-g2-qscale", "tiny-g2-qscale", Gemma2TinyDir, 1e-3},
                                                {"tiny-g3", "tiny-g3", Gemma3TinyDir},
                                                {"tiny-g3-scaled", "tiny-g3-scaled", Gemma3TinyDir}};
  return models;
}

// A test over each tiny checkpoint: its folder and its reference outputs' folder.
class TinyCheckpointTest : public ::testing::TestWithParam<TinyModel> {
 protected:
  void SetUp() override {
    root_ = GetParam().root();
    ASSERT_FALSE(root_.empty()) << "test data for " << GetParam().name << " is absent";
  }
  std::string ModelDir() const { return root_ + "/" + GetParam().name; }
  std::string RefDir() const { return root_ + "/reference/" + GetParam().reference; }
  std::string root_;
};
// The checkpoint's name as a test name.
std::string TinyModelName(const ::testing::TestParamInfo<TinyModel>& info);

// One of a reference's greedy generations: its prompt, its tokens, and how many of them any run must match (those
// before its first near-tie).
struct ReferenceGeneration {
  std::string prompt_name;
  std::vector<int32_t> prompt, tokens;
  size_t compare = 0;
};
std::vector<ReferenceGeneration> ReferenceGenerations(const std::string& ref_dir);

// A CPU backend over `dir` with room for `kv_tokens` positions (with `windowed`, kv_tokens / block_size blocks of
// KvCacheOptions::windowed's layout), its cache stored as `kv_dtype`.
std::unique_ptr<CpuBackend> OpenBackend(const std::string& dir, int kv_tokens = 4096, bool windowed = false,
                                        KvCacheDtype kv_dtype = KvCacheDtype::kAuto);
nlohmann::json ReadJson(const std::string& path);
std::vector<float> ReadF32(const std::string& path);
// log softmax of one logits row, in double.
std::vector<double> LogSoftmax(const float* row, int n);
// How the engine cuts steps in the tests: a token budget per step, and the largest prompt chunk of one sequence.
struct StepBudget {
  int max_tokens_per_step = 512;
  int prefill_chunk = 512;
};
// Runs the specs to completion on the shared engine over `backend` (prefix cache on or off).
std::vector<CompletedSequence> RunOnEngine(Backend* backend, const std::vector<SequenceSpec>& specs,
                                           StepBudget budget = {}, bool prefix_cache = false,
                                           AdapterStore* adapters = nullptr);
// gemma-lora-tiny's scores.json and generations.json of adapter `id` (registered in `adapters`), in `ref_dir`, on the
// engine over `backend`: each prompt's scores within `tolerance`, then every generation exactly, all prompts in one
// batch, in chunks of 7 tokens (the cache then holds adapted K/V), with the prefix cache on.
void ExpectLoraScoresAndGenerations(Backend* backend, AdapterStore* adapters, uint32_t id, const std::string& ref_dir,
                                    double tolerance);
// Greedy-generates `n` tokens for each prompt, all in one batch on the shared engine.
std::vector<std::vector<int32_t>> Greedy(Backend* backend, const std::vector<std::vector<int32_t>>& prompts, int n,
                                         StepBudget budget = {});

}  // namespace gemma::testing
