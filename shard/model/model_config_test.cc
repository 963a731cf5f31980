#include "shard/model/model_config.h"

#include <map>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "shard/checkpoint/checkpoint_writer.h"
#include "shard/model/published_shapes.h"

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
      {Mutate("architectures", "[\"Gemma2ForCausalLM\"]"), "expected [\"GemmaForCausalLM\"]"},
      {Mutate("hidden_act", "\"relu\""), "hidden_act"},
      {Mutate("num_key_value_heads", "3"), "multiple of num_key_value_heads"},
      {Mutate("hidden_size", "\"big\""), "must be an integer"},
      {Mutate("vocab_size", "-5"), "allowed 1.."},
      {Mutate("num_hidden_layers", "0"), "field \"num_hidden_layers\" is 0; allowed 1..1024"},
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


// config.json of google/gemma-2-9b as published.
constexpr char kGemma2_9B[] = R"({
  "architectures": ["Gemma2ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
  "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
  "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 3584, "initializer_range": 0.02,
  "intermediate_size": 14336, "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 16,
  "num_hidden_layers": 42, "num_key_value_heads": 8, "pad_token_id": 0, "query_pre_attn_scalar": 256,
  "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096, "sliding_window_size": 4096,
  "torch_dtype": "float32", "transformers_version": "4.42.0.dev0", "use_cache": true, "vocab_size": 256000})";

// config.json of google/gemma-3-1b-it as published (integers where the file has them).
constexpr char kGemma3_1B[] = R"({
  "architectures": ["Gemma3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "attn_logit_softcapping": null, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 106],
  "final_logit_softcapping": null, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152,
  "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768,
  "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
  "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
  "rope_scaling": null, "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
  "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0", "use_cache": true, "vocab_size": 262144})";

// config.json of google/gemma-3-27b-it: text_config lists only what differs from Gemma3TextConfig's defaults.
constexpr char kGemma3_27B[] = R"({
  "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000,
  "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
  "model_type": "gemma3",
  "text_config": {"head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504, "model_type": "gemma3_text",
                  "num_attention_heads": 32, "num_hidden_layers": 62, "num_key_value_heads": 16,
                  "query_pre_attn_scalar": 168, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                  "sliding_window": 1024},
  "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
  "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                    "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
                    "patch_size": 14, "vision_use_head": false}})";

TEST(ModelConfigTest, ParsesPublishedGemma2) {
  auto c = ParseModelConfig(kGemma2_9B, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->family, ModelFamily::kGemma2);
  EXPECT_EQ(c->ShapeName(), "gemma2-9b");
  EXPECT_EQ(c->attn_logit_softcap, 50.0f);
  EXPECT_EQ(c->final_logit_softcap, 30.0f);
  EXPECT_EQ(c->QueryScalar(), 256.0f);
  EXPECT_EQ(c->sliding_window, 4096);
  ASSERT_EQ(c->layer_attention.size(), 42u);
  EXPECT_TRUE(c->IsLocal(0));  // layer 0 local, then alternating
  EXPECT_FALSE(c->IsLocal(1));
  EXPECT_TRUE(c->IsLocal(40));
  EXPECT_FALSE(c->IsLocal(41));
  EXPECT_TRUE(c->sandwich_norms());
  EXPECT_FALSE(c->qk_norm());
  EXPECT_EQ(c->tensor_prefix, "model.");
}

TEST(ModelConfigTest, ParsesPublishedGemma3TextOnly) {
  auto c = ParseModelConfig(kGemma3_1B, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->family, ModelFamily::kGemma3);
  EXPECT_EQ(c->ShapeName(), "gemma3-1b");
  EXPECT_EQ(c->eos_id, 1);
  EXPECT_EQ(c->extra_eos_ids, std::vector<int>{106});
  EXPECT_EQ(c->attn_logit_softcap, 0.0f);
  EXPECT_EQ(c->final_logit_softcap, 0.0f);
  EXPECT_EQ(c->max_position_embeddings, 32768);
  for (int i = 0; i < 26; ++i) EXPECT_EQ(c->IsLocal(i), (i + 1) % 6 != 0) << "layer " << i;
  EXPECT_EQ(c->RopeTheta(0), 10000.0f);
  EXPECT_EQ(c->RopeTheta(5), 1000000.0f);
  EXPECT_EQ(c->RopeScale(5), 1.0f);
  EXPECT_TRUE(c->qk_norm());
  EXPECT_TRUE(c->ignored_tensor_prefixes.empty());
}

TEST(ModelConfigTest, ParsesPublishedGemma3MultimodalWithTextDefaults) {
  auto c = ParseModelConfig(kGemma3_27B, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->ShapeName(), "gemma3-27b");
  EXPECT_EQ(c->vocab_size, 262208);            // a default
  EXPECT_EQ(c->max_position_embeddings, 131072);  // a default
  EXPECT_EQ(c->rope_theta, 1000000.0f);        // a default
  EXPECT_EQ(c->rope_local_theta, 10000.0f);    // a default
  EXPECT_EQ(c->QueryScalar(), 168.0f);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->RopeScale(5), 8.0f);
  EXPECT_EQ(c->RopeScale(0), 1.0f);  // local layers are never scaled
  EXPECT_FALSE(c->IsLocal(59));
  EXPECT_TRUE(c->IsLocal(61));
  EXPECT_EQ(c->extra_eos_ids, std::vector<int>{106});
  EXPECT_EQ(c->tensor_prefix, "language_model.model.");
  EXPECT_FALSE(c->ignored_tensor_prefixes.empty());
}

// Newer transformers save RoPE settings as rope_parameters: the same model whichever release saved it.
TEST(ModelConfigTest, ReadsRopeParametersAsNewerTransformersSaveThem) {
  nlohmann::json j = nlohmann::json::parse(kGemma3_27B);
  auto& text = j["text_config"];
  text.erase("rope_scaling");
  text["rope_parameters"] = {{"full_attention", {{"rope_type", "linear"}, {"factor", 8.0}, {"rope_theta", 1000000.0}}},
                             {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 10000.0}}}};
  auto c = ParseModelConfig(j.dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->RopeScale(5), 8.0f);
  EXPECT_EQ(c->RopeScale(0), 1.0f);
  EXPECT_EQ(c->rope_theta, 1000000.0f);
  EXPECT_EQ(c->rope_local_theta, 10000.0f);
  // A base stated both ways must agree (null counts as not stated).
  text["rope_theta"] = 500000.0;
  auto contradicts = ParseModelConfig(j.dump(), "config.json");
  ASSERT_FALSE(contradicts.ok());
  EXPECT_NE(contradicts.status().message().find("contradicts rope_parameters"), std::string::npos)
      << contradicts.status();
  text.erase("rope_theta");
  text["rope_parameters"]["sliding_attention"]["rope_type"] = "yarn";
  auto unsupported = ParseModelConfig(j.dump(), "config.json");
  ASSERT_FALSE(unsupported.ok());
  EXPECT_NE(unsupported.status().message().find("rope_parameters"), std::string::npos) << unsupported.status();
}

TEST(ModelConfigTest, PublishedGemma23ShapesRoundTripThroughConfigJson) {
  for (const auto& [name, shape] : PublishedGemma23Shapes()) {
    auto c = ParseModelConfig(ModelConfigJson(shape), "config.json");
    ASSERT_TRUE(c.ok()) << name << ": " << c.status();
    EXPECT_EQ(c->ShapeName(), name);
    EXPECT_EQ(c->layer_attention, shape.layer_attention) << name;
    EXPECT_EQ(c->QueryScalar(), shape.QueryScalar()) << name;
    EXPECT_EQ(c->sliding_window, shape.sliding_window) << name;
    EXPECT_EQ(c->attn_logit_softcap, shape.attn_logit_softcap) << name;
    EXPECT_EQ(c->final_logit_softcap, shape.final_logit_softcap) << name;
    EXPECT_EQ(c->rope_global_scale, shape.rope_global_scale) << name;
    EXPECT_EQ(c->rope_local_theta, shape.rope_local_theta) << name;
    EXPECT_EQ(c->max_position_embeddings, shape.max_position_embeddings) << name;
    EXPECT_EQ(c->tensor_prefix, shape.tensor_prefix) << name;
  }
}

// Parameter counts of the text models as published (Gemma 3 4B and up without their 0.42 B vision tower).
TEST(ModelConfigTest, PublishedGemma23ShapesHaveTheirParameterCounts) {
  const std::map<std::string, double> billions = {{"gemma2-2b", 2.614}, {"gemma2-9b", 9.242}, {"gemma2-27b", 27.227},
                                                   {"gemma3-1b", 1.000}, {"gemma3-4b", 3.880}, {"gemma3-12b", 11.766},
                                                   {"gemma3-27b", 27.009}};
  for (const auto& [name, shape] : PublishedGemma23Shapes()) {
    EXPECT_NEAR(shape.ParameterCount() / 1e9, billions.at(name), 0.005) << name;
  }
}

TEST(ModelConfigTest, ShortenedShapesKeepTheirFamilysLayerPattern) {
  ModelConfig g3 = PublishedGemma23Shapes()[4].second;  // gemma3-4b
  SetNumLayers(7, &g3);
  ASSERT_EQ(g3.layer_attention.size(), 7u);
  for (int i = 0; i < 7; ++i) EXPECT_EQ(g3.IsLocal(i), i != 5) << i;
  ModelConfig g2 = PublishedGemma23Shapes()[0].second;
  SetNumLayers(3, &g2);
  EXPECT_EQ(g2.layer_attention, (std::vector<LayerAttention>{LayerAttention::kLocal, LayerAttention::kGlobal,
                                                             LayerAttention::kLocal}));
  auto parsed = ParseModelConfig(ModelConfigJson(g3), "config.json");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->layer_attention, g3.layer_attention);
}

// Replaces `"key": value` (the first occurrence) in `json`; an empty value removes the key.
std::string Edit(std::string json, const std::string& key, const std::string& value) {
  const std::string needle = "\"" + key + "\": ";
  const size_t at = json.find(needle);
  if (at == std::string::npos) return json;
  size_t end = at + needle.size();
  int depth = 0;
  for (; end < json.size(); ++end) {
    const char ch = json[end];
    if (ch == '{' || ch == '[') ++depth;
    if ((ch == '}' || ch == ']') && depth-- == 0) break;
    if (ch == ',' && depth == 0) break;
  }
  if (!value.empty()) return json.substr(0, at + needle.size()) + value + json.substr(end);
  if (json[end] == ',') ++end;
  return json.substr(0, at) + json.substr(end);
}

// `json` with a layer_types list in which layer i is global when (i + 1) % period == 0.
std::string WithLayerTypes(std::string json, int layers, int period) {
  std::string types = "\"layer_types\": [";
  for (int i = 0; i < layers; ++i) {
    types += (i ? ", " : "");
    types += (i + 1) % period == 0 ? "\"full_attention\"" : "\"sliding_attention\"";
  }
  return json.insert(1, types + "], ");
}

TEST(ModelConfigTest, RejectsBadGemma23ConfigsNamingTheField) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {Edit(kGemma2_9B, "model_type", "\"gemma4\""), "model_type \"gemma4\" is not supported; allowed: \"gemma\""},
      {Edit(kGemma2_9B, "architectures", "[\"Gemma3ForCausalLM\"]"), "expected [\"Gemma2ForCausalLM\"]"},
      {Edit(kGemma2_9B, "query_pre_attn_scalar", ""), "missing required field \"query_pre_attn_scalar\""},
      {Edit(kGemma2_9B, "attn_logit_softcapping", ""), "missing required field \"attn_logit_softcapping\""},
      {Edit(kGemma2_9B, "final_logit_softcapping", "-1"), "\"final_logit_softcapping\" is -1"},
      {Edit(kGemma2_9B, "head_dim", ""), "missing required field \"head_dim\""},
      {Edit(kGemma2_9B, "sliding_window", ""), "missing required field \"sliding_window\""},
      {Edit(kGemma2_9B, "sliding_window_size", "2048"), "sliding_window_size 2048 contradicts sliding_window 4096"},
      {Edit(kGemma2_9B, "rope_theta", "10000.0, \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 2}"),
       "rope_scaling is not supported for Gemma 2"},
      {Edit(WithLayerTypes(kGemma3_1B, 26, 6), "sliding_window_pattern", "4"),
       "\"layer_types\" contradicts \"sliding_window_pattern\""},
      {WithLayerTypes(kGemma2_9B, 42, 3), "\"layer_types\" contradicts Gemma 2's alternation"},
      {Edit(kGemma3_1B, "sliding_window_pattern", ""), "missing both \"layer_types\" and \"sliding_window_pattern\""},
      {Edit(kGemma3_1B, "rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 8}"), "allowed: null or {\"rope_type\": \"linear\""},
      {Edit(kGemma3_1B, "rope_local_base_freq", ""), "missing required field \"rope_local_base_freq\""},
      {Edit(kGemma3_1B, "eos_token_id", "[]"), "\"eos_token_id\" is []"},
      {Edit(kGemma3_1B, "eos_token_id", "[1, 300000]"), "\"eos_token_id\" (300000) is outside the vocabulary"},
      {Edit(kGemma3_27B, "text_config", ""), "needs an object \"text_config\""},
      {Edit(kGemma3_27B, "num_key_value_heads", "5"), "text_config: num_attention_heads (32) must be a multiple"},
      {Edit(kGemma3_27B, "architectures", "[\"Gemma3ForCausalLM\"]"), "expected [\"Gemma3ForConditionalGeneration\"]"},
  };
  ASSERT_TRUE(ParseModelConfig(WithLayerTypes(kGemma3_1B, 26, 6), "config.json").ok());
  ASSERT_TRUE(ParseModelConfig(WithLayerTypes(kGemma2_9B, 42, 2), "config.json").ok());
  for (const auto& [json, needle] : cases) {
    auto c = ParseModelConfig(json, "config.json");
    ASSERT_FALSE(c.ok()) << needle;
    EXPECT_NE(c.status().message().find(needle), std::string::npos) << c.status();
  }
  // layer_types of the wrong length, and text_config naming another model.
  std::string g3 = kGemma3_1B;
  g3.insert(1, "\"layer_types\": [\"sliding_attention\", \"full_attention\"], ");
  auto c = ParseModelConfig(g3, "config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("\"layer_types\" must be a list of num_hidden_layers (26) entries"),
            std::string::npos) << c.status();
  std::string mm = kGemma3_27B;
  mm.replace(mm.find("\"gemma3_text\""), 13, "\"gemma2\"");
  c = ParseModelConfig(mm, "config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("text_config.model_type \"gemma2\" contradicts"), std::string::npos)
      << c.status();
}

}  // namespace
}  // namespace gemma
