// Malformed checkpoints give clear errors naming the file and tensor; never a crash.
#include <cstring>
#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/checkpoint/checkpoint_writer.h"
#include "shard/model/model_weights.h"
#include "shard/model/quantized_checkpoint_writer.h"

namespace gemma {
namespace {

ModelConfig Small() {
  ModelConfig c = TinyShape();
  c.num_layers = 1;
  c.vocab_size = 64;
  return c;
}

// Small() as a Gemma 3 of the multimodal layout: QK-norm, sandwich norms, tensors under language_model.model.
ModelConfig SmallGemma3Multimodal() {
  ModelConfig c = Small();
  c.family = ModelFamily::kGemma3;
  c.num_layers = 2;
  c.query_pre_attn_scalar = 32;
  c.sliding_window = 8;
  c.layer_attention = {LayerAttention::kLocal, LayerAttention::kGlobal};
  c.rope_local_theta = 10000;
  c.rope_theta = 1000000;
  c.tensor_prefix = "language_model.model.";
  c.ignored_tensor_prefixes = {"vision_tower.", "multi_modal_projector."};
  return c;
}

// Writes a checkpoint of `shape` (Small() by default); `edit` may change the tensor list before writing.
std::string WriteCheckpoint(const std::string& tag, const std::function<void(std::vector<TensorToWrite>&)>& edit = {},
                            const std::string& config_json = ModelConfigJson(Small()),
                            const ModelConfig& shape = Small()) {
  const std::string dir = ::testing::TempDir() + "/ckpt-" + tag;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << config_json;
  static std::string zeros(1 << 20, '\0');
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, dims] : GemmaTensorShapes(shape)) {
    int64_t n = 2;
    for (int64_t d : dims) n *= d;
    tensors.push_back({name, DType::kBF16, dims, absl::string_view(zeros.data(), n)});
  }
  if (edit) edit(tensors);
  EXPECT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors, {}).ok());
  return dir;
}

std::string LoadError(const std::string& dir) {
  auto ckpt = Checkpoint::Open(dir);
  if (!ckpt.ok()) return std::string(ckpt.status().message());
  auto w = ModelWeights::Load(std::shared_ptr<const Checkpoint>(std::move(*ckpt)));
  if (!w.ok()) return std::string(w.status().message());
  return "";
}

TEST(CheckpointErrorsTest, ValidCheckpointLoads) { EXPECT_EQ(LoadError(WriteCheckpoint("ok")), ""); }

TEST(CheckpointErrorsTest, TruncatedFile) {
  const std::string dir = WriteCheckpoint("truncated");
  const auto path = dir + "/model.safetensors";
  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  const std::string err = LoadError(dir);
  EXPECT_NE(err.find("model.safetensors"), std::string::npos) << err;
  EXPECT_NE(err.find("past the end"), std::string::npos) << err;
}

TEST(CheckpointErrorsTest, HeaderLengthPastEnd) {
  const std::string dir = WriteCheckpoint("header");
  std::fstream f(dir + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
  f.write("\xff\xff\xff\x7f\0\0\0\0", 8);
  f.close();
  EXPECT_NE(LoadError(dir).find("header length"), std::string::npos);
}

TEST(CheckpointErrorsTest, MissingTensor) {
  const std::string err = LoadError(WriteCheckpoint("missing", [](auto& t) {
    std::erase_if(t, [](const TensorToWrite& x) { return x.name == "model.layers.0.mlp.up_proj.weight"; });
  }));
  EXPECT_NE(err.find("missing tensor \"model.layers.0.mlp.up_proj.weight\""), std::string::npos) << err;
}

TEST(CheckpointErrorsTest, WrongShape) {
  const std::string err = LoadError(WriteCheckpoint("shape", [](auto& t) {
    for (auto& x : t) {
      if (x.name == "model.layers.0.self_attn.k_proj.weight") {
        x.shape = {16, 128};
        x.bytes = x.bytes.substr(0, 16 * 128 * 2);
      }
    }
  }));
  EXPECT_NE(err.find("k_proj"), std::string::npos) << err;
  EXPECT_NE(err.find("config.json implies [32, 128]"), std::string::npos) << err;
}

TEST(CheckpointErrorsTest, WrongDType) {
  const std::string err = LoadError(WriteCheckpoint("dtype", [](auto& t) {
    for (auto& x : t) {
      if (x.name == "model.norm.weight") x.dtype = DType::kI16;
    }
  }));
  EXPECT_NE(err.find("model.norm.weight"), std::string::npos) << err;
  EXPECT_NE(err.find("dtype I16; allowed: BF16, F16, F32"), std::string::npos) << err;
}

// A NaN or an infinity among the weights is refused by tensor and place (it would make every logit NaN, and
// generation would go on silently), in a norm and in a matrix, whatever the format it loads in.
TEST(CheckpointErrorsTest, NonFiniteWeightsAreRefusedByPlace) {
  // Tensor `name` all zeros but for bf16 `value` at element `at`.
  auto with = [](const char* name, int64_t at, uint16_t value) {
    return [=](std::vector<TensorToWrite>& t) {
      static std::vector<std::string> kept;  // the bytes outlive the edit: written after it returns
      for (auto& x : t) {
        if (x.name != name) continue;
        std::string bytes(x.bytes.size(), '\0');
        std::memcpy(bytes.data() + 2 * at, &value, 2);
        x.bytes = kept.emplace_back(std::move(bytes));
      }
    };
  };
  constexpr uint16_t kNan = 0x7FC0, kMinusInfinity = 0xFF80;
  std::string err = LoadError(WriteCheckpoint("nan-norm", with("model.norm.weight", 5, kNan)));
  EXPECT_NE(err.find("model.norm.weight holds NaN at [5]"), std::string::npos) << err;
  // o_proj is [128, 128]: element 131 is row 1, column 3.
  err = LoadError(WriteCheckpoint("inf-matrix", with("model.layers.0.self_attn.o_proj.weight", 131, kMinusInfinity)));
  EXPECT_NE(err.find("model.layers.0.self_attn.o_proj.weight holds an infinity at [1, 3]"), std::string::npos) << err;
  EXPECT_NE(err.find("the checkpoint is damaged"), std::string::npos) << err;
  auto ckpt = Checkpoint::Open(WriteCheckpoint("nan-int8", with("model.layers.0.self_attn.q_proj.weight", 5, kNan)));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const auto tp = TensorParallel::Create((*ckpt)->config(), 0, 1);
  ASSERT_TRUE(tp.ok());
  WeightLoadOptions int8;
  int8.precision = WeightPrecision::kInt8;
  auto w = ModelWeights::Load(std::shared_ptr<const Checkpoint>(std::move(*ckpt)), *tp, int8);
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("q_proj.weight holds NaN at [0, 5]"), std::string::npos) << w.status();
  // `gemma quantize` refuses them too, and a finite weight whose 4-bit scale f16 cannot hold (what it would write
  // would load as an infinity).
  auto source =
      Checkpoint::Open(WriteCheckpoint("nan-source", with("model.layers.0.self_attn.q_proj.weight", 5, kNan)));
  ASSERT_TRUE(source.ok()) << source.status();
  const absl::Status nan = WriteQuantizedCheckpoint(**source, ::testing::TempDir() + "/nan-gptq",
                                                    CheckpointQuantization::Method::kGptq, 64);
  EXPECT_NE(nan.message().find("q_proj.weight holds NaN at [0, 5]"), std::string::npos) << nan;
  constexpr uint16_t kThreeMillion = 0x4A37;  // bf16 2.998e6: a group spanning 0..3e6 needs a scale of 2e5
  auto huge =
      Checkpoint::Open(WriteCheckpoint("huge-source", with("model.layers.0.mlp.up_proj.weight", 7, kThreeMillion)));
  ASSERT_TRUE(huge.ok()) << huge.status();
  const absl::Status past_f16 = WriteQuantizedCheckpoint(**huge, ::testing::TempDir() + "/huge-awq",
                                                         CheckpointQuantization::Method::kAwq, 64);
  EXPECT_NE(past_f16.message().find("up_proj.weight row 0, columns 0..63"), std::string::npos) << past_f16;
  EXPECT_NE(past_f16.message().find("past f16's largest value (65504)"), std::string::npos) << past_f16;
}

TEST(CheckpointErrorsTest, ConfigContradictsTensors) {
  ModelConfig more = Small();
  more.num_layers = 2;
  const std::string err = LoadError(WriteCheckpoint("layers", {}, ModelConfigJson(more)));
  EXPECT_NE(err.find("model.layers.1."), std::string::npos) << err;
  // Fewer layers in the config than the weights hold: refused, never served cut short.
  ModelConfig two = Small();
  two.num_layers = 2;
  const std::string fewer = LoadError(WriteCheckpoint("fewer", {}, ModelConfigJson(Small()), two));
  EXPECT_NE(fewer.find("tensor model.layers.1."), std::string::npos) << fewer;
  EXPECT_NE(fewer.find("num_hidden_layers is 1"), std::string::npos) << fewer;
  ModelConfig wider = Small();
  wider.hidden_size = 256;
  EXPECT_NE(LoadError(WriteCheckpoint("wider", {}, ModelConfigJson(wider))).find("config.json implies"),
            std::string::npos);
}

TEST(CheckpointErrorsTest, UnknownModelTypeAndActivation) {
  std::string cfg = ModelConfigJson(Small());
  std::string llama = cfg;
  llama.replace(llama.find("\"gemma\""), 7, "\"llama\"");
  EXPECT_NE(LoadError(WriteCheckpoint("llama", {}, llama)).find("model_type \"llama\""), std::string::npos);
  std::string relu = cfg;
  relu.replace(relu.find("\"gelu_pytorch_tanh\""), 19, "\"relu\"");
  EXPECT_NE(LoadError(WriteCheckpoint("relu", {}, relu)).find("hidden_activation"), std::string::npos);
}

std::string WriteGemma3(const std::string& tag, const std::function<void(std::vector<TensorToWrite>&)>& edit = {}) {
  const ModelConfig c = SmallGemma3Multimodal();
  return WriteCheckpoint(tag, edit, ModelConfigJson(c), c);
}

TEST(CheckpointErrorsTest, MultimodalGemma3LoadsIgnoringVisionTensors) {
  static const std::string vision(64, '\0');
  EXPECT_EQ(LoadError(WriteGemma3("g3-ok", [](auto& t) {
              t.push_back({"vision_tower.vision_model.post_layernorm.weight", DType::kBF16, {32}, vision});
              t.push_back({"multi_modal_projector.mm_soft_emb_norm.weight", DType::kBF16, {32}, vision});
            })),
            "");
}

// As transformers 4.52 and later save the class: model.language_model.*, model.vision_tower.*.
TEST(CheckpointErrorsTest, MultimodalGemma3SavedByNewerTransformersLoads) {
  static const std::string vision(64, '\0');
  EXPECT_EQ(LoadError(WriteGemma3("g3-resaved", [](auto& t) {
              for (auto& x : t) x.name.replace(0, std::string("language_model.model.").size(), "model.language_model.");
              t.push_back({"model.vision_tower.vision_model.post_layernorm.weight", DType::kBF16, {32}, vision});
            })),
            "");
}

TEST(CheckpointErrorsTest, Gemma3MissingOrMisshapenTensorsAreNamed) {
  std::string err = LoadError(WriteGemma3("g3-missing", [](auto& t) {
    std::erase_if(t, [](const TensorToWrite& x) {
      return x.name == "language_model.model.layers.1.pre_feedforward_layernorm.weight";
    });
  }));
  EXPECT_NE(err.find("missing tensor \"language_model.model.layers.1.pre_feedforward_layernorm.weight\""),
            std::string::npos) << err;
  err = LoadError(WriteGemma3("g3-qnorm", [](auto& t) {
    for (auto& x : t) {
      if (x.name == "language_model.model.layers.0.self_attn.q_norm.weight") x.shape = {16}, x.bytes = x.bytes.substr(0, 32);
    }
  }));
  EXPECT_NE(err.find("\"language_model.model.layers.0.self_attn.q_norm.weight\" has shape [16] but config.json "
                     "implies [32]"), std::string::npos) << err;
  // Text tensors under the text-only names, in a checkpoint whose config says multimodal.
  err = LoadError(WriteGemma3("g3-prefix", [](auto& t) {
    for (auto& x : t) x.name.replace(0, std::string("language_model.").size(), "");
  }));
  EXPECT_NE(err.find("missing tensor \"language_model.model.embed_tokens.weight\""), std::string::npos) << err;
}

TEST(CheckpointErrorsTest, ShardedIndexProblems) {
  const std::string dir = WriteCheckpoint("index");
  std::filesystem::rename(dir + "/model.safetensors", dir + "/model-00001-of-00001.safetensors");
  std::ofstream(dir + "/model.safetensors.index.json")
      << R"({"metadata":{},"weight_map":{"model.norm.weight":"model-00002-of-00002.safetensors"}})";
  EXPECT_NE(LoadError(dir).find("weight_map[\"model.norm.weight\"] names model-00002-of-00002.safetensors, which is "
                                "not in"),
            std::string::npos)
      << LoadError(dir);
  std::ofstream(dir + "/model.safetensors.index.json") << R"({"weight_map":{"a":"../etc/passwd"}})";
  EXPECT_NE(LoadError(dir).find("inside the checkpoint directory"), std::string::npos);
  std::ofstream(dir + "/model.safetensors.index.json") << R"({"weight_map":[]})";
  EXPECT_NE(LoadError(dir).find("\"weight_map\" is array; allowed: an object"), std::string::npos) << LoadError(dir);
  // A file that holds a tensor the index does not list, or gives to another file: said which.
  std::filesystem::copy_file(dir + "/model-00001-of-00001.safetensors", dir + "/other.safetensors",
                             std::filesystem::copy_options::overwrite_existing);
  std::ofstream(dir + "/model.safetensors.index.json")
      << R"({"weight_map":{"model.norm.weight":"other.safetensors",)"
      << R"("model.embed_tokens.weight":"model-00001-of-00001.safetensors"}})";
  const std::string err = LoadError(dir);
  EXPECT_TRUE(err.find("\" is not listed in model.safetensors.index.json") != std::string::npos ||
              err.find("\" is assigned to other.safetensors by model.safetensors.index.json") != std::string::npos)
      << err;
}

TEST(CheckpointErrorsTest, MissingFiles) {
  EXPECT_NE(LoadError("/nonexistent-dir").find("not a directory"), std::string::npos);
  const std::string dir = WriteCheckpoint("nofile");
  std::filesystem::remove(dir + "/model.safetensors");
  EXPECT_NE(LoadError(dir).find("neither model.safetensors"), std::string::npos);
}

}  // namespace
}  // namespace gemma
