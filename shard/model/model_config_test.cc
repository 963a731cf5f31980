#include "shard/model/model_config.h"

#include "gtest/gtest.h"
#include "shard/checkpoint/checkpoint_writer.h"

namespace gemma {
namespace {

// config.json of google/gemma-7b as published on the Hub (head_dim 256 != 3072 / 16).
constexpr char kGemma7B[] = R"({
  "architectures": ["GemmaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 2, "eos_token_id": 1, "head_dim": 256, "hidden_act": "gelu", "hidden_size": 3072,
  "initializer_range": 0.02, "intermediate_size": 24576, "max_position_embeddings": 8192,
  "model_type": "gemma", "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 16,
  "pad_token_id": 0, "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 10000.0,
  "torch_dtype": "bfloat16", "transformers_version": "4.38.0.dev0", "use_cache": true, "vocab_size": 256000})";

TEST(ModelConfigTest, ParsesPublishedGemma7B) {
  auto c = ParseModelConfig(kGemma7B, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->ShapeName(), "gemma-7b");
  EXPECT_EQ(c->q_dim(), 4096);
  EXPECT_NE(c->q_dim(), c->hidden_size);
}

TEST(ModelConfigTest, KnownShapesRoundTripThroughConfigJson) {
  for (const ModelConfig& shape : {Gemma2BShape(), Gemma7BShape(), TinyShape()}) {
    auto c = ParseModelConfig(ModelConfigJson(shape), "config.json");
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->ShapeName(), shape.ShapeName());
    EXPECT_EQ(c->num_kv_heads, shape.num_kv_heads);
    EXPECT_EQ(c->head_dim, shape.head_dim);
  }
  EXPECT_EQ(Gemma2BShape().ShapeName(), "gemma-2b");
  EXPECT_NEAR(Gemma2BShape().ParameterCount() / 1e9, 2.51, 0.01);
  EXPECT_NEAR(Gemma7BShape().ParameterCount() / 1e9, 8.54, 0.01);
}

std::string Mutate(const std::string& key, const std::string& value) {
  std::string json = kGemma7B;
  const std::string needle = "\"" + key + "\": ";
  const size_t at = json.find(needle);
  const size_t end = json.find_first_of(",}", at);
  return json.substr(0, at + needle.size()) + value + json.substr(end);
}

TEST(ModelConfigTest, RejectsBadConfigsWithClearErrors) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {Mutate("model_type", "\"llama\""), "model_type \"llama\" is not supported"},
      {Mutate("hidden_act", "\"relu\""), "hidden_act"},
      {Mutate("num_key_value_heads", "3"), "multiple of num_key_value_heads"},
      {Mutate("hidden_size", "\"big\""), "must be an integer"},
      {Mutate("vocab_size", "-5"), "allowed 0.."},
      {Mutate("rope_scaling", "{\"type\": \"linear\"}"), "rope_scaling"},
      {"{", "not valid JSON"},
      {"{\"model_type\": \"gemma\"}", "missing required field"},
  };
  for (const auto& [json, needle] : cases) {
    auto c = ParseModelConfig(json, "config.json");
    ASSERT_FALSE(c.ok()) << needle;
    EXPECT_NE(c.status().message().find(needle), std::string::npos) << c.status();
  }
  std::string with_activation = kGemma7B;
  with_activation.insert(1, "\"hidden_activation\": \"gelu_new\",");
  auto c = ParseModelConfig(with_activation, "config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("hidden_activation"), std::string::npos);
}

}  // namespace
}  // namespace gemma
