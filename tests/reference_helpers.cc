#include "tests/reference_helpers.h"

#include <cstring>

#include "gtest/gtest.h"
#include "shard/checkpoint.h"
#include "tests/testdata.h"

namespace gemma::testing {

std::unique_ptr<CpuBackend> OpenBackend(const std::string& dir, int kv_tokens) {
  auto ckpt = Checkpoint::Open(dir);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  auto weights = ModelWeights::Load(std::shared_ptr<const Checkpoint>(std::move(*ckpt)));
  EXPECT_TRUE(weights.ok()) << weights.status();
  KvCacheOptions kv;
  kv.num_blocks = kv_tokens / kv.block_size;
  auto backend = CpuBackend::Create(std::shared_ptr<const ModelWeights>(std::move(*weights)), kv);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return std::move(*backend);
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

std::vector<std::vector<int32_t>> Greedy(Backend* backend, const std::vector<std::vector<int32_t>>& prompts, int n,
                                         GeneratorOptions options) {
  std::vector<GenerationRequest> reqs;
  for (const auto& p : prompts) {
    GenerationRequest r;
    r.prompt = p;
    r.max_new_tokens = n;
    reqs.push_back(r);
  }
  Generator gen(backend, options);
  auto results = gen.Run(reqs);
  EXPECT_TRUE(results.ok()) << results.status();
  std::vector<std::vector<int32_t>> out;
  for (const auto& r : *results) out.push_back(r.tokens);
  return out;
}

}  // namespace gemma::testing
