// Pre-quantized checkpoints load as published. Each case writes a tiny checkpoint from tiny-mqa with a packer of
// its own, written from the formats' reference code: AutoGPTQ packs eight inputs per int32 word, lowest bits
// first, and stores zero - 1; AutoAWQ packs eight outputs per word in the order 0, 2, 4, 6, 1, 3, 5, 7;
// compressed-tensors stores float8_e4m3fn weights with a scale per output channel ([out, 1]) or per tensor. Then
// it checks that every element the loader gives back, at one rank and at each rank of two, is what the packer
// stored, and that the model runs on them. (The packers here stand apart from the writer behind `gemma quantize`
// on purpose: a loader and writer sharing one misreading of a format would agree with each other.)
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "shard/checkpoint/checkpoint.h"
#include "shard/checkpoint/checkpoint_writer.h"
#include "shard/cpu/cpu_backend.h"
#include "shard/model/dtype.h"
#include "shard/model/model_weights.h"
#include "shard/model/quantized_checkpoint_writer.h"
#include "tests/testdata.h"

namespace gemma {
namespace {

using testing::GemmaTinyDir;

enum class Packing { kGptq, kGptqV2, kAwq };

struct Packed {
  std::vector<int32_t> qweight, qzeros;
  std::vector<uint16_t> scales;  // f16
  std::vector<float> dequantized;  // [out, in]: what the loader must give back
};

// Asymmetric round-to-nearest per group of `group` inputs, then packed as `packing` lays it out.
Packed Pack(const std::vector<float>& w, int64_t out, int64_t in, int64_t group, Packing packing) {
  Packed p;
  const int64_t groups = in / group;
  p.scales.resize(groups * out);
  p.qzeros.assign(groups * out / 8, 0);
  p.dequantized.resize(out * in);
  const bool awq = packing == Packing::kAwq;
  p.qweight.assign(awq ? in * out / 8 : in / 8 * out, 0);
  constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};
  auto awq_slot = [&](int64_t n) {  // the nibble holding output n
    for (int i = 0; i < 8; ++i) {
      if (kAwqOrder[i] == n % 8) return i;
    }
    return -1;
  };
  for (int64_t n = 0; n < out; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      float lo = 0, hi = 0;
      for (int64_t k = g * group; k < (g + 1) * group; ++k) lo = std::min(lo, w[n * in + k]), hi = std::max(hi, w[n * in + k]);
      const uint16_t scale_bits = F32ToF16((hi - lo) / 15);
      const float scale = F16ToF32(scale_bits);
      const int zero = static_cast<int>(std::clamp(std::round(-lo / scale), 0.0f, 15.0f));
      p.scales[g * out + n] = scale_bits;
      const int stored_zero = packing == Packing::kGptq ? zero - 1 : zero;
      const int zero_nibble = awq ? awq_slot(n) : static_cast<int>(n % 8);
      p.qzeros[g * (out / 8) + n / 8] |= static_cast<int32_t>((static_cast<uint32_t>(stored_zero) & 0xF) << (4 * zero_nibble));
      for (int64_t k = g * group; k < (g + 1) * group; ++k) {
        const int code = static_cast<int>(std::clamp(std::round(w[n * in + k] / scale) + zero, 0.0f, 15.0f));
        p.dequantized[n * in + k] = static_cast<float>(code - zero) * scale;
        if (awq) {
          p.qweight[k * (out / 8) + n / 8] |= static_cast<int32_t>(static_cast<uint32_t>(code) << (4 * awq_slot(n)));
        } else {
          p.qweight[(k / 8) * out + n] |= static_cast<int32_t>(static_cast<uint32_t>(code) << (4 * (k % 8)));
        }
      }
    }
  }
  return p;
}

absl::string_view Bytes(const void* data, size_t n) { return {static_cast<const char*>(data), n}; }

struct Written {
  std::string dir;
  std::map<std::string, std::vector<float>> dequantized;  // by module; absent: a plain weight
};

// Stores one projection `module` ([out, in] weights w) through `add(name, dtype, shape, bytes)` and returns what
// the loader must give back for it; an empty result stores it plainly.
using AddTensor = std::function<void(const std::string&, DType, std::vector<int64_t>, absl::string_view)>;
using ProjectionPacker = std::function<std::vector<float>(const std::string& module, const std::vector<float>& w,
                                                          int64_t out, int64_t in, const AddTensor& add)>;

// tiny-mqa with every projection stored by `pack`, and `quantization_config` in config.json.
Written WriteCheckpoint(const std::string& tag, const nlohmann::json& quantization_config,
                        const ProjectionPacker& pack) {
  const std::string src = GemmaTinyDir() + "/tiny-mqa";
  auto ckpt = Checkpoint::Open(src);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  const ModelConfig& c = (*ckpt)->config();
  Written result;
  result.dir = ::testing::TempDir() + "/quantized-" + tag;
  std::filesystem::create_directories(result.dir);
  std::vector<TensorToWrite> tensors;
  std::vector<std::vector<char>> storage;
  storage.reserve(1000);
  const AddTensor add = [&](const std::string& name, DType dtype, std::vector<int64_t> shape, absl::string_view bytes) {
    storage.emplace_back(bytes.begin(), bytes.end());
    tensors.push_back({name, dtype, std::move(shape), {storage.back().data(), storage.back().size()}});
  };
  for (const auto& [name, shape] : GemmaTensorShapes(c)) {
    auto t = (*ckpt)->Get(name, shape);
    EXPECT_TRUE(t.ok()) << t.status();
    const bool projection = shape.size() == 2 && name.find("embed_tokens") == std::string::npos;
    const absl::string_view stored(t->data, t->num_bytes);
    if (!projection) {
      add(name, t->dtype, shape, stored);
      continue;
    }
    const std::string module = name.substr(0, name.size() - std::string(".weight").size());
    const int64_t out = shape[0], in = shape[1];
    std::vector<float> w(out * in);
    for (int64_t i = 0; i < out * in; ++i) w[i] = FloatElementAsF32(t->dtype, t->data, i);
    std::vector<float> dequantized = pack(module, w, out, in, add);
    if (dequantized.empty()) {
      add(name, t->dtype, shape, stored);
    } else {
      result.dequantized[module] = std::move(dequantized);
    }
  }
  EXPECT_TRUE(WriteSafetensors(result.dir + "/model.safetensors", tensors, {{"format", "pt"}}).ok());
  std::ifstream in(src + "/config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  config["quantization_config"] = quantization_config;
  std::ofstream(result.dir + "/config.json") << config.dump(2);
  return result;
}

// tiny-mqa with every projection packed in 4 bits; `quantization_config` as AutoGPTQ / AutoAWQ write it.
// With inf_scale, layer 0's o_proj holds an f16 infinity at scales[1, 2].
Written WriteCheckpoint(const std::string& tag, Packing packing, const nlohmann::json& quantization_config,
                        bool act_order_g_idx = false, bool inf_scale = false) {
  return WriteCheckpoint(tag, quantization_config,
                         [&](const std::string& module, const std::vector<float>& w, int64_t out, int64_t in,
                             const AddTensor& add) {
                           Packed p = Pack(w, out, in, 32, packing);
                           if (inf_scale && module == "model.layers.0.self_attn.o_proj") p.scales[out + 2] = 0x7C00;
                           const bool awq = packing == Packing::kAwq;
                           add(module + ".qweight", DType::kI32,
                               awq ? std::vector<int64_t>{in, out / 8} : std::vector<int64_t>{in / 8, out},
                               Bytes(p.qweight.data(), p.qweight.size() * 4));
                           add(module + ".qzeros", DType::kI32, {in / 32, out / 8},
                               Bytes(p.qzeros.data(), p.qzeros.size() * 4));
                           add(module + ".scales", DType::kF16, {in / 32, out}, Bytes(p.scales.data(), p.scales.size() * 2));
                           if (!awq) {
                             std::vector<int32_t> g_idx(in);
                             for (int64_t k = 0; k < in; ++k) g_idx[k] = static_cast<int32_t>(k / 32);
                             if (act_order_g_idx) std::swap(g_idx[0], g_idx[in - 1]);
                             add(module + ".g_idx", DType::kI32, {in}, Bytes(g_idx.data(), in * 4));
                           }
                           return std::move(p.dequantized);
                         });
}

const nlohmann::json kGptq = {{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 32}, {"desc_act", false},
                              {"sym", false}};
const nlohmann::json kGptqV2 = {{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 32}, {"desc_act", false},
                                {"checkpoint_format", "gptq_v2"}};
const nlohmann::json kAwq = {{"quant_method", "awq"}, {"bits", 4}, {"group_size", 32}, {"zero_point", true},
                             {"version", "gemm"}};

// Every element of every projection at each rank of `world`: as the packer stored it (in `format`), or, for a
// module stored plainly, the bf16 weight itself.
void ExpectElementsAsPacked(const Written& written, int world, WeightFormat format = WeightFormat::kInt4) {
  auto ckpt = Checkpoint::Open(written.dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::shared_ptr<const Checkpoint> shared(std::move(*ckpt));
  const ModelConfig& c = shared->config();
  for (int rank = 0; rank < world; ++rank) {
    auto tp = TensorParallel::Create(c, rank, world);
    ASSERT_TRUE(tp.ok());
    auto w = ModelWeights::Load(shared, *tp);
    ASSERT_TRUE(w.ok()) << w.status();
    const int64_t d = c.head_dim;
    for (int i = 0; i < c.num_layers; ++i) {
      const LayerWeights& l = (*w)->layer(i);
      struct Check {
        const char* name;
        const MatrixView* view;
        int64_t row_begin, col_begin;
      };
      for (const Check& k : {Check{"self_attn.q_proj", &l.q, tp->q_head_begin * d, 0},
                             Check{"self_attn.k_proj", &l.k, tp->kv_head_begin * d, 0},
                             Check{"self_attn.v_proj", &l.v, tp->kv_head_begin * d, 0},
                             Check{"mlp.up_proj", &l.up, tp->ffn_begin, 0},
                             Check{"self_attn.o_proj", &l.o, 0, tp->q_head_begin * d},
                             Check{"mlp.gate_proj", &l.gate, tp->ffn_begin, 0},
                             Check{"mlp.down_proj", &l.down, 0, tp->ffn_begin}}) {
        const std::string module = absl::StrCat("model.layers.", i, ".", k.name);
        const int64_t in = k.name[0] == 's' && std::string(k.name) == "self_attn.o_proj" ? c.q_dim()
                           : std::string(k.name) == "mlp.down_proj"                     ? c.intermediate_size
                                                                                        : c.hidden_size;
        const auto packed = written.dequantized.find(module);
        std::vector<float> plain;
        if (packed == written.dequantized.end()) {
          ASSERT_EQ(k.view->format, WeightFormat::kBF16) << module;
          auto whole = shared->Raw(module + ".weight");
          ASSERT_TRUE(whole.ok());
          plain.resize(whole->num_bytes / DTypeSize(whole->dtype));
          // Plain weights load as bf16 (f16 / f32 ones rounded to it).
          for (size_t i = 0; i < plain.size(); ++i) {
            plain[i] = Bf16ToF32(F32ToBf16(FloatElementAsF32(whole->dtype, whole->data, i)));
          }
        } else {
          ASSERT_EQ(k.view->format, format) << module;
        }
        const std::vector<float>& want = packed == written.dequantized.end() ? plain : packed->second;
        for (int64_t r = 0; r < k.view->rows; ++r) {
          for (int64_t col = 0; col < k.view->cols; ++col) {
            ASSERT_EQ(ElementAt(*k.view, r, col), want[(k.row_begin + r) * in + k.col_begin + col])
                << module << " rank " << rank << " (" << r << ", " << col << ")";
          }
        }
      }
    }
  }
}

// The model runs on the checkpoint's weights: finite logits.
void ExpectModelRuns(const std::string& dir) {
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  std::shared_ptr<const Checkpoint> shared(std::move(*ckpt));
  auto w = ModelWeights::Load(shared);
  ASSERT_TRUE(w.ok()) << w.status();
  KvCacheOptions kv;
  kv.num_blocks = 4;
  auto backend = CpuBackend::Create(std::shared_ptr<const ModelWeights>(std::move(*w)), kv);
  ASSERT_TRUE(backend.ok());
  const std::vector<int32_t> prompt = {2, 17, 99, 200, 31};
  std::vector<int32_t> blocks = {0, 1, 2, 3};
  SequenceStep step{prompt, 0, blocks, LogitsWanted::kLast};
  StepLogits out;
  ASSERT_TRUE((*backend)->Forward({&step, 1}, &out).ok());
  for (float v : out.values) ASSERT_TRUE(std::isfinite(v));
}

class PackedInt4Test : public ::testing::TestWithParam<Packing> {};

TEST_P(PackedInt4Test, LoadsEveryElementAsPackedAtOneAndTwoRanks) {
  if (GemmaTinyDir().empty()) GTEST_FAIL() << "gemma-tiny test data is absent";
  const Packing packing = GetParam();
  const nlohmann::json& config = packing == Packing::kGptq ? kGptq : packing == Packing::kGptqV2 ? kGptqV2 : kAwq;
  const Written written = WriteCheckpoint(absl::StrCat("ok", static_cast<int>(packing)), packing, config);
  ExpectElementsAsPacked(written, 1);
  ExpectElementsAsPacked(written, 2);
  ExpectModelRuns(written.dir);
}

INSTANTIATE_TEST_SUITE_P(Formats, PackedInt4Test, ::testing::Values(Packing::kGptq, Packing::kGptqV2, Packing::kAwq),
                         [](const ::testing::TestParamInfo<Packing>& info) {
                           return info.param == Packing::kGptq ? "gptq" : info.param == Packing::kGptqV2 ? "gptq_v2" : "awq";
                         });

// `gemma quantize`'s writer: what it writes loads, and every weight comes back within half a step of its group
// (plus the f16 rounding of the scale).
TEST(PackedInt4WriterTest, WrittenCheckpointsLoadWithinHalfAStep) {
  if (GemmaTinyDir().empty()) GTEST_FAIL() << "gemma-tiny test data is absent";
  auto src = Checkpoint::Open(GemmaTinyDir() + "/tiny-mqa");
  ASSERT_TRUE(src.ok());
  std::shared_ptr<const Checkpoint> source(std::move(*src));
  auto bf16 = ModelWeights::Load(source);
  ASSERT_TRUE(bf16.ok());
  for (auto method : {CheckpointQuantization::Method::kGptq, CheckpointQuantization::Method::kAwq}) {
    const std::string dir = ::testing::TempDir() + "/written-" + QuantizationMethodName(method);
    ASSERT_TRUE(WriteQuantizedCheckpoint(*source, dir, method, 64).ok());
    auto written = Checkpoint::Open(dir);
    ASSERT_TRUE(written.ok()) << written.status();
    EXPECT_EQ((*written)->config().quantization.method, method);
    EXPECT_EQ((*written)->config().quantization.group_size, 64);
    auto w = ModelWeights::Load(std::shared_ptr<const Checkpoint>(std::move(*written)));
    ASSERT_TRUE(w.ok()) << w.status();
    for (int i = 0; i < source->config().num_layers; ++i) {
      const LayerWeights& got = (*w)->layer(i);
      const LayerWeights& want = (*bf16)->layer(i);
      for (auto part : {&LayerWeights::q, &LayerWeights::k, &LayerWeights::v, &LayerWeights::o, &LayerWeights::gate,
                        &LayerWeights::up, &LayerWeights::down}) {
        const MatrixView& q = got.*part;
        ASSERT_EQ(q.format, WeightFormat::kInt4);
        for (int64_t r = 0; r < q.rows; ++r) {
          for (int64_t k = 0; k < q.cols; ++k) {
            const float scale = q.scales[r * q.scale_stride + k / q.group_size];
            // The scale spans the group's range in 14 or 15 steps: a scale too large would pass the bound below.
            if (k % q.group_size == 0) {
              float lo = 0, hi = 0;
              for (int64_t j = k; j < k + q.group_size; ++j) {
                lo = std::min(lo, ElementAt(want.*part, r, j));
                hi = std::max(hi, ElementAt(want.*part, r, j));
              }
              ASSERT_LE(scale, (hi - lo) / 14 * 1.001f + 1e-12f) << "layer " << i << " row " << r;
            }
            ASSERT_LE(std::abs(ElementAt(q, r, k) - ElementAt(want.*part, r, k)), 0.51f * scale)
                << QuantizationMethodName(method) << " layer " << i << " (" << r << ", " << k << ")";
          }
        }
      }
    }
  }
  // Writing over the input is refused before anything is touched.
  const absl::Status onto_itself =
      WriteQuantizedCheckpoint(*source, source->dir(), CheckpointQuantization::Method::kGptq, 64);
  EXPECT_NE(onto_itself.message().find("is the input checkpoint itself"), std::string::npos) << onto_itself;
  // An already quantized checkpoint is not quantized again.
  auto again = Checkpoint::Open(::testing::TempDir() + "/written-gptq");
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(WriteQuantizedCheckpoint(**again, ::testing::TempDir() + "/twice", CheckpointQuantization::Method::kGptq,
                                         64)
                   .ok());
}

absl::Status LoadStatus(const std::string& dir) {
  auto ckpt = Checkpoint::Open(dir);
  if (!ckpt.ok()) return ckpt.status();
  return ModelWeights::Load(std::shared_ptr<const Checkpoint>(std::move(*ckpt))).status();
}

TEST(PackedInt4ErrorsTest, UnsupportedConfigsAndTensorsAreNamed) {
  if (GemmaTinyDir().empty()) GTEST_FAIL() << "gemma-tiny test data is absent";
  struct Bad {
    nlohmann::json config;
    std::string expected;
  };
  nlohmann::json act_order = kGptq, eight_bits = kGptq, big_groups = kGptq, other = kGptq, gemv = kAwq,
                 typed_act_order = kGptq, typed_method = kGptq, typed_zero_point = kAwq, huge_bits = kGptq;
  act_order["desc_act"] = true;
  typed_act_order["desc_act"] = "no";
  typed_method["quant_method"] = 1;
  typed_zero_point["zero_point"] = "true";
  huge_bits["bits"] = 4294967300LL;
  eight_bits["bits"] = 8;
  big_groups["group_size"] = 256;
  other["quant_method"] = "bitsandbytes";
  gemv["version"] = "gemv";
  for (const Bad& bad : {Bad{act_order, "desc_act true"}, Bad{eight_bits, "bits must be 4"},
                         Bad{big_groups, "group_size must be 32, 64 or 128, not 256"},
                         Bad{other, "quant_method \"bitsandbytes\" is not supported; allowed: gptq, awq"},
                         Bad{gemv, "version \"gemv\" is not supported"},
                         Bad{typed_act_order, "desc_act must be true or false, not \"no\""},
                         Bad{typed_method, "quant_method must be a string, not 1"},
                         Bad{typed_zero_point, "zero_point must be true or false"},
                         Bad{huge_bits, "bits must be 4 (W4A16), not 4294967300"}}) {
    const Written written = WriteCheckpoint("bad", Packing::kGptq, bad.config);
    const absl::Status s = LoadStatus(written.dir);
    ASSERT_FALSE(s.ok()) << bad.expected;
    EXPECT_NE(s.message().find(bad.expected), std::string::npos) << s;
    EXPECT_NE(s.message().find("quantization_config"), std::string::npos) << s;
  }
  // A g_idx that regroups inputs (act-order) is refused, naming the tensor.
  const Written reordered = WriteCheckpoint("gidx", Packing::kGptq, kGptq, /*act_order_g_idx=*/true);
  absl::Status s = LoadStatus(reordered.dir);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("model.layers.0.self_attn.q_proj.g_idx[0]"), std::string::npos) << s;
  // An infinity among the scales (f16 overflows easily) is refused by place.
  const Written inf = WriteCheckpoint("infscale", Packing::kGptq, kGptq, /*act_order_g_idx=*/false, /*inf_scale=*/true);
  s = LoadStatus(inf.dir);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("model.layers.0.self_attn.o_proj.scales holds a non-finite value at [1, 2]"),
            std::string::npos) << s;
  // An AWQ config over GPTQ-shaped tensors: the shape names the tensor and what config.json implies.
  const Written mismatched = WriteCheckpoint("mismatch", Packing::kGptq, kAwq);
  s = LoadStatus(mismatched.dir);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("model.layers.0.self_attn.q_proj.qweight\" has shape"), std::string::npos) << s;
  // Re-quantizing a pre-quantized checkpoint is refused.
  auto ckpt = Checkpoint::Open(mismatched.dir);
  ASSERT_TRUE(ckpt.ok());
  auto tp = TensorParallel::Create((*ckpt)->config(), 0, 1);
  WeightLoadOptions int8;
  int8.precision = WeightPrecision::kInt8;
  auto w = ModelWeights::Load(std::shared_ptr<const Checkpoint>(std::move(*ckpt)), *tp, int8);
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("awq weights, which load as they are"), std::string::npos) << w.status();
}

// ---- compressed-tensors FP8 ----

// E4M3 straight from its definition (float8_e4m3fn): 2^-6 * m/8 below the normals, (1 + m/8) * 2^(e - 7) above;
// e = 15, m = 7 is NaN.
float E4m3Value(int code) {
  const int e = (code >> 3) & 15, m = code & 7;
  if (e == 15 && m == 7) return std::nanf("");
  const float v = e == 0 ? std::ldexp(m / 8.0f, -6) : std::ldexp(1.0f + m / 8.0f, e - 7);
  return (code & 0x80) != 0 ? -v : v;
}

// The code nearest v by search over every finite code (ties to the even code), clamped to +-448 first.
uint8_t NearestE4m3(float v) {
  v = std::clamp(v, -448.0f, 448.0f);
  int best = 0;
  float best_err = INFINITY;
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;
    const float err = std::fabs(E4m3Value(c) - v);
    if (err < best_err || (err == best_err && c % 2 == 0 && (c & 0x80) == (v < 0 ? 0x80 : 0))) best = c, best_err = err;
  }
  return static_cast<uint8_t>(best);
}

// As llm-compressor's FP8_DYNAMIC scheme writes it (dynamic per-token fp8 activations, which this server leaves
// in f32 / bf16), ignoring the LM head and one projection.
nlohmann::json Fp8Config() {
  return {{"quant_method", "compressed-tensors"},
          {"format", "float-quantized"},
          {"quantization_status", "compressed"},
          {"config_groups",
           {{"group_0",
             {{"targets", {"Linear"}},
              {"weights",
               {{"num_bits", 8}, {"type", "float"}, {"strategy", "channel"}, {"symmetric", true}, {"dynamic", false}}},
              {"input_activations",
               {{"num_bits", 8}, {"type", "float"}, {"strategy", "token"}, {"symmetric", true}, {"dynamic", true}}},
              {"output_activations", nullptr}}}}},
          {"ignore", {"lm_head", "model.layers.0.mlp.down_proj"}},
          {"kv_cache_scheme", nullptr}};
}

enum class Fp8Fault { kNone, kScaleShape, kScaleDtype, kNanCode, kE5m2 };

// Per-channel f32 scales [out, 1], except v_proj: one bf16 scale for the tensor, shape []; layer 0's down_proj
// left plain (the config ignores it).
Written WriteFp8(const std::string& tag, const nlohmann::json& config, Fp8Fault fault = Fp8Fault::kNone) {
  return WriteCheckpoint(tag, config, [&](const std::string& module, const std::vector<float>& w, int64_t out,
                                          int64_t in, const AddTensor& add) {
    if (module == "model.layers.0.mlp.down_proj") return std::vector<float>();
    const bool per_tensor = module.ends_with("v_proj");
    std::vector<float> scales(out);
    float whole = 0;
    for (float v : w) whole = std::max(whole, std::fabs(v));
    for (int64_t n = 0; n < out; ++n) {
      float row = 0;
      for (int64_t k = 0; k < in; ++k) row = std::max(row, std::fabs(w[n * in + k]));
      scales[n] = per_tensor ? Bf16ToF32(F32ToBf16(whole / 448)) : row / 448;
    }
    std::vector<uint8_t> codes(out * in);
    std::vector<float> dequantized(out * in);
    for (int64_t n = 0; n < out; ++n) {
      for (int64_t k = 0; k < in; ++k) {
        codes[n * in + k] = NearestE4m3(w[n * in + k] / scales[n]);
        dequantized[n * in + k] = E4m3Value(codes[n * in + k]) * scales[n];
      }
    }
    if (fault == Fp8Fault::kNanCode) codes[5] = 0xff;
    add(module + ".weight", fault == Fp8Fault::kE5m2 ? DType::kF8E5M2 : DType::kF8E4M3, {out, in},
        Bytes(codes.data(), codes.size()));
    if (per_tensor) {
      const uint16_t bits = F32ToBf16(scales[0]);
      add(module + ".weight_scale", DType::kBF16, {}, Bytes(&bits, 2));
    } else if (fault == Fp8Fault::kScaleDtype) {
      add(module + ".weight_scale", DType::kI32, {out, 1}, Bytes(scales.data(), out * 4));
    } else {
      add(module + ".weight_scale", DType::kF32, fault == Fp8Fault::kScaleShape ? std::vector<int64_t>{out / 2, 2}
                                                                                 : std::vector<int64_t>{out, 1},
          Bytes(scales.data(), out * 4));
    }
    return dequantized;
  });
}

TEST(Fp8CheckpointTest, LoadsEveryElementAsStoredAtOneAndTwoRanks) {
  if (GemmaTinyDir().empty()) GTEST_FAIL() << "gemma-tiny test data is absent";
  const Written written = WriteFp8("fp8", Fp8Config());
  ExpectElementsAsPacked(written, 1, WeightFormat::kFp8);
  ExpectElementsAsPacked(written, 2, WeightFormat::kFp8);
  ExpectModelRuns(written.dir);
  // The checkpoint's own precision may be named; another one would quantize it again.
  auto ckpt = Checkpoint::Open(written.dir);
  ASSERT_TRUE(ckpt.ok());
  std::shared_ptr<const Checkpoint> shared(std::move(*ckpt));
  auto tp = TensorParallel::Create(shared->config(), 0, 1);
  WeightLoadOptions options;
  options.precision = WeightPrecision::kFp8;
  EXPECT_TRUE(ModelWeights::Load(shared, *tp, options).ok());
  options.precision = WeightPrecision::kInt4;
  auto refused = ModelWeights::Load(shared, *tp, options);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("compressed-tensors fp8 weights, which load as they are"),
            std::string::npos)
      << refused.status();
}

// `gemma quantize --weights fp8`: the checkpoint it writes loads as the same codes and scales that quantizing the
// bf16 checkpoint at load gives, element for element.
TEST(Fp8CheckpointTest, WrittenCheckpointsLoadAsQuantizingAtLoadDoes) {
  if (GemmaTinyDir().empty()) GTEST_FAIL() << "gemma-tiny test data is absent";
  auto src = Checkpoint::Open(GemmaTinyDir() + "/tiny-mqa");
  ASSERT_TRUE(src.ok());
  std::shared_ptr<const Checkpoint> source(std::move(*src));
  auto tp = TensorParallel::Create(source->config(), 0, 1);
  WeightLoadOptions fp8;
  fp8.precision = WeightPrecision::kFp8;
  auto at_load = ModelWeights::Load(source, *tp, fp8);
  ASSERT_TRUE(at_load.ok()) << at_load.status();
  const std::string dir = ::testing::TempDir() + "/written-fp8";
  ASSERT_TRUE(WriteQuantizedCheckpoint(*source, dir, CheckpointQuantization::Method::kFp8, 0).ok());
  auto written = Checkpoint::Open(dir);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ((*written)->config().quantization.method, CheckpointQuantization::Method::kFp8);
  auto w = ModelWeights::Load(std::shared_ptr<const Checkpoint>(std::move(*written)));
  ASSERT_TRUE(w.ok()) << w.status();
  for (int i = 0; i < source->config().num_layers; ++i) {
    for (auto part : {&LayerWeights::q, &LayerWeights::k, &LayerWeights::v, &LayerWeights::o, &LayerWeights::gate,
                      &LayerWeights::up, &LayerWeights::down}) {
      const MatrixView& got = (*w)->layer(i).*part;
      const MatrixView& want = (*at_load)->layer(i).*part;
      ASSERT_EQ(got.format, WeightFormat::kFp8);
      for (int64_t r = 0; r < got.rows; ++r) {
        ASSERT_EQ(got.scales[r], want.scales[r]) << "layer " << i << " row " << r;
        for (int64_t k = 0; k < got.cols; ++k) ASSERT_EQ(got.codes[r * got.stride + k], want.codes[r * want.stride + k]);
      }
    }
  }
}

TEST(Fp8CheckpointTest, UnsupportedConfigsAndTensorsAreNamed) {
  if (GemmaTinyDir().empty()) GTEST_FAIL() << "gemma-tiny test data is absent";
  struct Bad {
    nlohmann::json config;
    Fp8Fault fault;
    std::string expected;
  };
  nlohmann::json packed = Fp8Config(), block = Fp8Config(), four_bits = Fp8Config(), ints = Fp8Config(),
                 frozen = Fp8Config(), no_groups = Fp8Config(), dynamic = Fp8Config();
  packed["format"] = "pack-quantized";
  block["config_groups"]["group_0"]["weights"]["strategy"] = "block";
  four_bits["config_groups"]["group_0"]["weights"]["num_bits"] = 4;
  ints["config_groups"]["group_0"]["weights"]["type"] = "int";
  dynamic["config_groups"]["group_0"]["weights"]["dynamic"] = true;
  frozen["quantization_status"] = "frozen";
  no_groups.erase("config_groups");
  for (const Bad& bad :
       {Bad{packed, Fp8Fault::kNone, "format \"pack-quantized\" is not supported; allowed: float-quantized"},
        Bad{block, Fp8Fault::kNone, "config_groups.group_0.weights.strategy \"block\" is not supported; allowed: channel, tensor"},
        Bad{four_bits, Fp8Fault::kNone, "config_groups.group_0.weights.num_bits must be 8, not 4"},
        Bad{ints, Fp8Fault::kNone, "weights.type \"int\" is not supported; allowed: float"},
        Bad{dynamic, Fp8Fault::kNone, "weights.dynamic must be false, not true"},
        Bad{frozen, Fp8Fault::kNone, "quantization_status \"frozen\" is not supported"},
        Bad{no_groups, Fp8Fault::kNone, "config_groups must be an object"},
        Bad{Fp8Config(), Fp8Fault::kScaleShape, "model.layers.0.self_attn.q_proj.weight_scale has shape [64, 2]"},
        Bad{Fp8Config(), Fp8Fault::kScaleDtype, "model.layers.0.self_attn.q_proj.weight_scale is I32; allowed: F32, BF16, F16"},
        Bad{Fp8Config(), Fp8Fault::kNanCode, "model.layers.0.self_attn.q_proj.weight row 0 holds an E4M3 NaN code"},
        Bad{Fp8Config(), Fp8Fault::kE5m2, "q_proj.weight\" has dtype F8_E5M2; allowed: F8_E4M3"}}) {
    const Written written = WriteFp8("fp8-bad", bad.config, bad.fault);
    const absl::Status s = LoadStatus(written.dir);
    ASSERT_FALSE(s.ok()) << bad.expected;
    EXPECT_NE(s.message().find(bad.expected), std::string::npos) << s;
  }
}

}  // namespace
}  // namespace gemma
