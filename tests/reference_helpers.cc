#include "tests/reference_helpers.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>

#include "gtest/gtest.h"
#include "engine/local_executor.h"
#include "shard/checkpoint/checkpoint.h"
#include "tests/testdata.h"

namespace gemma::testing {

std::unique_ptr<CpuBackend> OpenBackend(const std::string& dir, int kv_tokens, bool windowed, KvCacheDtype kv_dtype) {
  auto ckpt = Checkpoint::Open(dir);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  auto weights = ModelWeights::Load(std::shared_ptr<const Checkpoint>(std::move(*ckpt)));
  EXPECT_TRUE(weights.ok()) << weights.status();
  KvCacheOptions kv;
  kv.num_blocks = kv_tokens / kv.block_size;
  kv.windowed = windowed;
  kv.dtype = kv_dtype;
  auto backend = CpuBackend::Create(std::shared_ptr<const ModelWeights>(std::move(*weights)), kv);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return std::move(*backend);
}

std::string TinyModelName(const ::testing::TestParamInfo<TinyModel>& info) {
  std::string n = info.param.name;
  for (char& c : n) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return n;
}

std::vector<ReferenceGeneration> ReferenceGenerations(const std::string& ref_dir) {
  std::vector<ReferenceGeneration> out;
  const auto gens = ReadJson(ref_dir + "/generations.json");
  for (const auto& g : gens["results"]) {
    ReferenceGeneration r;
    r.prompt_name = g["prompt"].get<std::string>();
    r.prompt = g["prompt_ids"].get<std::vector<int32_t>>();
    r.tokens = g["generated_ids"].get<std::vector<int32_t>>();
    r.compare = r.tokens.size();
    if (!g["first_step_with_margin_below_1e-3"].is_null()) r.compare = g["first_step_with_margin_below_1e-3"].get<size_t>();
    out.push_back(std::move(r));
  }
  return out;
}

nlohmann::json ReadJson(const std::string& path) {
  auto j = nlohmann::json::parse(ReadFile(path), nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << path;
  return j;
}

std::vector<float> ReadF32(const std::string& path) {
  const std::string bytes = ReadFile(path);
  std::vector<float> out(bytes.size() / 4);
  std::memcpy(out.data(), bytes.data(), out.size() * 4);
  return out;
}

std::vector<CompletedSequence> RunOnEngine(Backend* backend, const std::vector<SequenceSpec>& specs,
                                           StepBudget budget, bool prefix_cache, AdapterStore* adapters) {
  LocalExecutor executor(backend, SequenceHistory::kDefaultMaxSequences, adapters);
  SchedulerLimits limits;
  limits.max_tokens_per_step = budget.max_tokens_per_step;
  limits.max_prefill_chunk = budget.prefill_chunk;
  limits.max_queued = static_cast<int>(specs.size());
  Engine engine(executor.EngineOptionsFor(limits, prefix_cache), &executor);
  auto results = RunBatch(engine, specs);
  EXPECT_TRUE(results.ok()) << results.status();
  return results.ok() ? *std::move(results) : std::vector<CompletedSequence>(specs.size());
}

std::vector<double> LogSoftmax(const float* row, int n) {
  const double m = *std::max_element(row, row + n);
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(row[i] - m);
  std::vector<double> out(n);
  for (int i = 0; i < n; ++i) out[i] = row[i] - m - std::log(sum);
  return out;
}

std::vector<std::vector<int32_t>> Greedy(Backend* backend, const std::vector<std::vector<int32_t>>& prompts, int n,
                                         StepBudget budget) {
  std::vector<SequenceSpec> specs;
  for (const auto& p : prompts) {
    SequenceSpec s;
    s.prompt = p;
    s.max_new_tokens = n;
    specs.push_back(s);
  }
  std::vector<std::vector<int32_t>> out;
  for (auto& r : RunOnEngine(backend, specs, budget)) out.push_back(std::move(r.tokens));
  return out;
}

void ExpectLoraScoresAndGenerations(Backend* backend, AdapterStore* adapters, uint32_t id, const std::string& ref_dir,
                                    double tolerance) {
  const auto scores = ReadJson(ref_dir + "/scores.json");
  for (const auto& p : scores["prompts"]) {
    SequenceSpec spec;
    spec.prompt = p["ids"].get<std::vector<int32_t>>();
    spec.score = true;
    spec.adapter = id;
    const auto got = RunOnEngine(backend, {spec}, {}, false, adapters)[0].prompt_logprobs;
    const auto ref = p["token_logprobs"].get<std::vector<double>>();
    ASSERT_EQ(got.size(), ref.size());
    for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(got[i], ref[i], tolerance) << p["prompt"] << " " << i;
  }
  const auto gens = ReadJson(ref_dir + "/generations.json");
  std::vector<SequenceSpec> specs;
  for (const auto& g : gens["results"]) {
    SequenceSpec spec;
    spec.prompt = g["prompt_ids"].get<std::vector<int32_t>>();
    spec.max_new_tokens = static_cast<int32_t>(g["generated_ids"].size());
    spec.adapter = id;
    spec.cache_salt = id;
    specs.push_back(spec);
  }
  const auto results = RunOnEngine(backend, specs, {64, 7}, true, adapters);
  ASSERT_EQ(results.size(), specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(results[i].tokens, gens["results"][i]["generated_ids"].get<std::vector<int32_t>>())
        << gens["results"][i]["prompt"];
  }
}

}  // namespace gemma::testing
