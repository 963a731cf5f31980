// LoRA adapters in peft's format against Google's reference outputs of the
// adapted (merged) tiny models: logits, scores and greedy generations; rows of
// other adapters and of the base model in one batch; bad adapters refused.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/model/lora_loader.h"
#include "shard/runtime/adapter_store.h"
#include "tests/reference_helpers.h"
#include "tests/testdata.h"

namespace gemma::testing {
namespace {

struct AdapterCase {
  std::string adapter;  // folder in gemma-lora-tiny
  std::string base;     // gemma-tiny checkpoint
  std::string
      reference;  // reference folder (the f32 copy shares the bf16 one's)
};

void PrintTo(const AdapterCase& c, std::ostream* os) {
  *os << c.adapter << " on " << c.base;
}

const std::vector<AdapterCase>& Cases() {
  static const std::vector<AdapterCase> cases = {
      {"mha-r8-all", "tiny-mha", "mha-r8-all"},
      {"mha-r4-qv", "tiny-mha", "mha-r4-qv"},
      {"mha-r4-qv-f32", "tiny-mha", "mha-r4-qv"},
      {"mqa-r8-rslora", "tiny-mqa", "mqa-r8-rslora"}};
  return cases;
}

constexpr double kTolerance = 1e-4;  // gemma-lora-tiny's README: an f32
                                     // implementation holds to about 5e-5

class LoraReferenceTest : public ::testing::TestWithParam<AdapterCase> {
 protected:
  void SetUp() override {
    root_ = GemmaLoraTinyDir();
    ASSERT_FALSE(root_.empty())
        << "gemma-lora-tiny is absent: the LoRA reference checks cannot run";
    backend_ = OpenBackend(GemmaTinyDir() + "/" + GetParam().base);
    store_ = std::make_unique<AdapterStore>(
        LoraLoaderFor(backend_->config(),
                      *TensorParallel::Create(backend_->config(), 0, 1)),
        4);
    auto id = store_->Register("test", root_ + "/" + GetParam().adapter);
    ASSERT_TRUE(id.ok()) << id.status();
    id_ = *id;
    auto a = store_->Get(id_);
    ASSERT_TRUE(a.ok()) << a.status();
    adapter_ = *a;
  }
  std::string RefDir() const {
    return root_ + "/reference/" + GetParam().reference;
  }

  std::string root_;
  std::unique_ptr<CpuBackend> backend_;
  std::unique_ptr<AdapterStore> store_;
  uint32_t id_ = 0;
  std::shared_ptr<const LoraAdapter> adapter_;
};

std::vector<int32_t> Blocks(int first, int count) {
  std::vector<int32_t> b(count);
  for (int i = 0; i < count; ++i) b[i] = first + i;
  return b;
}

TEST_P(LoraReferenceTest, LogitsMatchTheMergedReference) {
  const int vocab = backend_->config().vocab_size;
  for (const char* prompt : {"fox", "rand37", "rand200"}) {
    const auto meta = ReadJson(RefDir() + "/logits_" + prompt + ".json");
    const auto ids = meta["ids"].get<std::vector<int32_t>>();
    const auto ref = ReadF32(RefDir() + "/logits_" + prompt + ".f32.bin");
    ASSERT_EQ(ref.size(), ids.size() * vocab);
    const auto blocks =
        Blocks(0, static_cast<int>(ids.size()) / backend_->kv_block_size() + 1);
    SequenceStep adapted{ids, 0, blocks, LogitsWanted::kAll};
    adapted.adapter = adapter_.get();
    StepLogits with, without;
    ASSERT_TRUE(backend_->Forward({&adapted, 1}, &with).ok());
    SequenceStep plain{ids, 0, blocks, LogitsWanted::kAll};
    ASSERT_TRUE(backend_->Forward({&plain, 1}, &without).ok());
    double worst = 0, moved = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      worst = std::max(worst,
                       std::abs(static_cast<double>(with.values[i]) - ref[i]));
      moved = std::max(
          moved, std::abs(static_cast<double>(without.values[i]) - ref[i]));
    }
    EXPECT_LT(worst, kTolerance) << prompt;
    // The adapter is really applied: the base model is 0.3 to 0.9 away (the
    // README's checks).
    EXPECT_GT(moved, 0.1) << prompt;
    RecordProperty(absl::StrCat("max_abs_logit_diff_", prompt),
                   absl::StrCat(worst));
  }
}

TEST_P(LoraReferenceTest, ScoresAndGreedyGenerationsMatchOnTheEngine) {
  ExpectLoraScoresAndGenerations(backend_.get(), store_.get(), id_, RefDir(),
                                 kTolerance);
}

// One step holding the base model, this adapter and the same prompt again:
// every row equals its run alone, bit for bit (no merged weights, no cross-row
// effects).
TEST_P(LoraReferenceTest, MixedBatchRowsEqualTheirRunsAlone) {
  const auto ids = ReadJson(RefDir() + "/logits_rand37.json")["ids"]
                       .get<std::vector<int32_t>>();
  const int per = static_cast<int>(ids.size()) / backend_->kv_block_size() + 1;
  std::vector<std::vector<int32_t>> tables = {Blocks(0, per), Blocks(per, per),
                                              Blocks(2 * per, per)};
  const LoraAdapter* which[] = {nullptr, adapter_.get(), nullptr};
  std::vector<SequenceStep> batch;
  for (int i = 0; i < 3; ++i) {
    SequenceStep s{ids, 0, tables[i], LogitsWanted::kAll};
    s.adapter = which[i];
    batch.push_back(s);
  }
  StepLogits mixed;
  ASSERT_TRUE(backend_->Forward(batch, &mixed).ok());
  const int vocab = backend_->config().vocab_size;
  for (int i = 0; i < 3; ++i) {
    StepLogits alone;
    ASSERT_TRUE(backend_->Forward({&batch[i], 1}, &alone).ok());
    ASSERT_EQ(0, std::memcmp(alone.values.data(), mixed.Row(mixed.row_begin[i]),
                             ids.size() * vocab * sizeof(float)))
        << "row " << i;
  }
}

// QLoRA's deployment: the adapter over an int8, int4 or fp8 base gives the logits of the same adapter over that
// base's weights dequantized to f32 (the adapter's terms add to whatever the base projection gives), and moves them
// as far from the base as over bf16.
TEST_P(LoraReferenceTest, AdaptersRunOverQuantizedBases) {
  const auto ids = ReadJson(RefDir() + "/logits_rand37.json")["ids"].get<std::vector<int32_t>>();
  const auto blocks = Blocks(0, static_cast<int>(ids.size()) / backend_->kv_block_size() + 1);
  auto ckpt = Checkpoint::Open(GemmaTinyDir() + "/" + GetParam().base);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::shared_ptr<const Checkpoint> shared(std::move(*ckpt));
  auto tp = TensorParallel::Create(shared->config(), 0, 1);
  ASSERT_TRUE(tp.ok());
  KvCacheOptions kv;
  kv.num_blocks = static_cast<int>(blocks.size());
  auto logits = [&](const std::shared_ptr<const ModelWeights>& w, const LoraAdapter* adapter) {
    auto backend = CpuBackend::Create(w, kv);
    EXPECT_TRUE(backend.ok()) << backend.status();
    SequenceStep step{ids, 0, blocks, LogitsWanted::kAll};
    step.adapter = adapter;
    StepLogits out;
    EXPECT_TRUE((*backend)->Forward({&step, 1}, &out).ok());
    return out.values;
  };
  for (WeightPrecision p : {WeightPrecision::kInt8, WeightPrecision::kInt4, WeightPrecision::kFp8}) {
    WeightLoadOptions load;
    load.precision = p;
    auto quantized = ModelWeights::Load(shared, *tp, load);
    ASSERT_TRUE(quantized.ok()) << quantized.status();
    std::shared_ptr<const ModelWeights> q(std::move(*quantized));
    std::shared_ptr<const ModelWeights> f(q->Dequantized());
    const auto with = logits(q, adapter_.get());
    const auto want = logits(f, adapter_.get());
    const auto without = logits(q, nullptr);
    double worst = 0, moved = 0;
    for (size_t i = 0; i < with.size(); ++i) {
      worst = std::max(worst, std::abs(double(with[i]) - want[i]));
      moved = std::max(moved, std::abs(double(with[i]) - without[i]));
    }
    EXPECT_LT(worst, kTolerance) << WeightPrecisionName(p);
    EXPECT_GT(moved, 0.1) << WeightPrecisionName(p) << ": the adapter should move the logits";
  }
}

INSTANTIATE_TEST_SUITE_P(Adapters, LoraReferenceTest,
                         ::testing::ValuesIn(Cases()), [](const auto& info) {
                           std::string n = info.param.adapter;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// Bad adapters are refused with the file and the field named.
class LoraLoaderErrorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = GemmaLoraTinyDir();
    ASSERT_FALSE(root_.empty()) << "gemma-lora-tiny is absent";
    auto ckpt = Checkpoint::Open(GemmaTinyDir() + "/tiny-mha");
    ASSERT_TRUE(ckpt.ok());
    config_ = (*ckpt)->config();
    dir_ = ::testing::TempDir() + "/lora_errors_" + std::to_string(::getpid());
    std::filesystem::create_directories(dir_);
    std::filesystem::copy_file(
        root_ + "/mha-r4-qv/adapter_model.safetensors",
        dir_ + "/adapter_model.safetensors",
        std::filesystem::copy_options::overwrite_existing);
    config_json_ = ReadJson(root_ + "/mha-r4-qv/adapter_config.json");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  absl::Status LoadWith(const nlohmann::json& config) {
    std::ofstream(dir_ + "/adapter_config.json") << config.dump();
    return LoadLoraAdapter(dir_, config_,
                           *TensorParallel::Create(config_, 0, 1))
        .status();
  }
  void ExpectRefused(const nlohmann::json& config, const std::string& says) {
    const absl::Status s = LoadWith(config);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    EXPECT_NE(s.message().find(says), std::string::npos) << s.message();
  }
  std::string root_, dir_;
  ModelConfig config_;
  nlohmann::json config_json_;
};

TEST_F(LoraLoaderErrorsTest, NamesTheFieldThatIsWrong) {
  ASSERT_TRUE(LoadWith(config_json_).ok());
  auto c = config_json_;
  c["r"] = 65;
  ExpectRefused(c, "ranks 1 to 64");
  c = config_json_;
  c["peft_type"] = "IA3";
  ExpectRefused(c, "only \"LORA\"");
  c = config_json_;
  c["use_dora"] = true;
  ExpectRefused(c, "use_dora");
  c = config_json_;
  c["target_modules"] = {"q_proj", "lm_head"};
  ExpectRefused(c, "lm_head");
  c = config_json_;
  c["target_modules"] = {"q_proj"};  // the file also holds v_proj tensors
  ExpectRefused(c, "does not target v_proj");
  c = config_json_;
  c["r"] = 8;  // the tensors are rank 4
  ExpectRefused(c, "needs [8, 128]");
  ExpectRefused(nlohmann::json::array(), "not a JSON object");
  std::ofstream(dir_ + "/adapter_config.json") << R"({"peft_type": "LORA", "r": 4, "lora_alpha": Infinity})";
  const absl::Status not_json = LoadLoraAdapter(dir_, config_, *TensorParallel::Create(config_, 0, 1)).status();
  EXPECT_NE(not_json.message().find("is not valid JSON"), std::string::npos) << not_json;
  // PEFT's layers_to_transform: the layers it names must exist, and the file may hold no other layer.
  c = config_json_;
  c["layers_to_transform"] = {7};
  ExpectRefused(c, "names layer 7; this model has layers 0..1");
  c["layers_to_transform"] = 0;  // the file holds layer 1 too
  ExpectRefused(c, "layers_to_transform leaves layer 1 out");
  c["layers_to_transform"] = "all";
  ExpectRefused(c, "allowed: a layer index (0 up to the model's layer count - 1), or a list of them");
  c["layers_to_transform"] = {0, 1};
  EXPECT_TRUE(LoadWith(c).ok());
  c = config_json_;
  c["peft_type"] = 1;  // a wrong type is an error, never an exception
  ExpectRefused(c, "peft_type");
  c = config_json_;
  c["use_rslora"] = "true";
  ExpectRefused(c, "use_rslora");
  // Finite in JSON, but a scaling f32 cannot hold.
  c = config_json_;
  c["lora_alpha"] = 1e300;
  ExpectRefused(c, "makes the scaling 2.5e+299, past what f32 holds");
  // Without lora_alpha, peft's default (8) whatever the rank: scaling 8 / 4.
  c = config_json_;
  c.erase("lora_alpha");
  std::ofstream(dir_ + "/adapter_config.json") << c.dump();
  auto defaulted = LoadLoraAdapter(dir_, config_, *TensorParallel::Create(config_, 0, 1));
  ASSERT_TRUE(defaulted.ok()) << defaulted.status();
  EXPECT_EQ((*defaulted)->scaling, 2.0f);
}

// Beyond its bound the store drops the least recently used adapter and reads it again when next asked, unless its
// files changed meanwhile.
TEST_F(LoraLoaderErrorsTest, TheStoreReadsDroppedAdaptersAgainAndRefusesChangedOnes) {
  std::filesystem::copy_file(root_ + "/mha-r4-qv/adapter_config.json", dir_ + "/adapter_config.json",
                             std::filesystem::copy_options::overwrite_existing);
  AdapterStore store(LoraLoaderFor(config_, *TensorParallel::Create(config_, 0, 1)), 1);
  auto a = store.Register("a", root_ + "/mha-r8-all");
  auto b = store.Register("b", dir_);
  ASSERT_TRUE(a.ok() && b.ok());
  auto first = store.Get(*a);  // b came last: a was dropped and is read again
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ((*first)->rank, 8);
  const auto listed = store.List();
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_TRUE(listed[0].resident);
  EXPECT_FALSE(listed[1].resident);
  // b's files change while it is not resident: reading it again is refused, by name.
  std::filesystem::last_write_time(dir_ + "/adapter_model.safetensors",
                                   std::filesystem::last_write_time(dir_ + "/adapter_model.safetensors") +
                                       std::chrono::seconds(5));
  const auto changed = store.Get(*b);
  EXPECT_TRUE(absl::IsFailedPrecondition(changed.status())) << changed.status();
  EXPECT_NE(changed.status().message().find("changed since it was loaded"), std::string::npos);
  EXPECT_TRUE(store.Unregister("b").ok());
  EXPECT_TRUE(absl::IsNotFound(store.Get(*b).status()));
  EXPECT_TRUE(absl::IsAlreadyExists(store.Register("a", dir_).status()));
}

// A backend's adapter slots are checked when an adapter is registered, with the flag that would make room spelled as
// the command that started the backend spells it: `gemma generate --adapter` refuses at load, not at its first step.
TEST_F(LoraLoaderErrorsTest, AnAdapterAboveTheSlotsIsRefusedAtRegistration) {
  AdapterStore store(LoraLoaderFor(config_, *TensorParallel::Create(config_, 0, 1)), 1);
  const LoraCapacity rank4{4, 1};
  auto fits = [&](const LoraAdapter& a) { return CheckAdapterFits(rank4, a, kCliLoraFlags); };
  const auto big = store.Register("big", root_ + "/mha-r8-all", fits);
  EXPECT_TRUE(absl::IsInvalidArgument(big.status())) << big.status();
  EXPECT_NE(big.status().message().find("rank 8"), std::string::npos) << big.status();
  EXPECT_NE(big.status().message().find("up to 4"), std::string::npos) << big.status();
  EXPECT_NE(big.status().message().find("--gpu-lora-max-rank"), std::string::npos) << big.status();
  EXPECT_TRUE(store.List().empty());
  EXPECT_TRUE(store.Register("small", root_ + "/mha-r4-qv", fits).ok());
  const LoraCapacity none{0, 0};
  const auto refused = store.Register("other", root_ + "/mha-r8-all", [&](const LoraAdapter& a) {
    return CheckAdapterFits(none, a, kWorkerLoraFlags);
  });
  EXPECT_NE(refused.status().message().find("--gpu_lora_slots"), std::string::npos) << refused.status();
  EXPECT_EQ(store.List().size(), 1u);
}

TEST_F(LoraLoaderErrorsTest, AnAdapterForAnotherModelIsRefused) {
  auto ckpt = Checkpoint::Open(GemmaTinyDir() + "/tiny-mqa");
  ASSERT_TRUE(ckpt.ok());
  // mha-r8-all's k_proj B is [128, 8]; tiny-mqa's k_proj has 32 outputs.
  const absl::Status s =
      LoadLoraAdapter(root_ + "/mha-r8-all", (*ckpt)->config(),
                      *TensorParallel::Create((*ckpt)->config(), 0, 1))
          .status();
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_NE(s.message().find("k_proj"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("adapter_model.safetensors"), std::string::npos)
      << s.message();
}

TEST_F(LoraLoaderErrorsTest, MissingAndTruncatedFilesAreRefused) {
  std::filesystem::remove(dir_ + "/adapter_model.safetensors");
  EXPECT_FALSE(LoadWith(config_json_).ok());
  std::ofstream(dir_ + "/adapter_model.safetensors")
      << "\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":";
  const absl::Status s = LoadWith(config_json_);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_FALSE(LoadLoraAdapter(dir_ + "/nowhere", config_,
                               *TensorParallel::Create(config_, 0, 1))
                   .ok());
}

}  // namespace
}  // namespace gemma::testing
