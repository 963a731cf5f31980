// Checkpoints stored as F32 and F16 load (converted to bf16) and give the reference logits.
#include <filesystem>

#include "gtest/gtest.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/checkpoint/checkpoint_writer.h"
#include "shard/model/dtype.h"
#include "tests/reference_helpers.h"
#include "tests/testdata.h"

namespace gemma::testing {
namespace {

// Rewrites tiny-mha's tensors in `dtype` into a fresh directory.
std::string Reencode(DType dtype, const std::string& tag) {
  const std::string src = GemmaTinyDir() + "/tiny-mha";
  const std::string dst = ::testing::TempDir() + "/reencoded-" + tag;
  std::filesystem::create_directories(dst);
  std::filesystem::copy_file(src + "/config.json", dst + "/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  auto ckpt = Checkpoint::Open(src);
  EXPECT_TRUE(ckpt.ok());
  std::vector<std::string> storage;
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, shape] : GemmaTensorShapes((*ckpt)->config())) {
    auto t = (*ckpt)->Get(name, shape);
    EXPECT_TRUE(t.ok()) << t.status();
    const int64_t n = t->num_bytes / 2;
    std::string bytes(n * DTypeSize(dtype), '\0');
    for (int64_t i = 0; i < n; ++i) {
      uint16_t b;
      std::memcpy(&b, t->data + 2 * i, 2);
      const float f = Bf16ToF32(b);
      if (dtype == DType::kF32) {
        std::memcpy(&bytes[4 * i], &f, 4);
      } else {  // F16: exact for these magnitudes except f16 subnormals
        _Float16 h = static_cast<_Float16>(f);
        std::memcpy(&bytes[2 * i], &h, 2);
      }
    }
    storage.push_back(std::move(bytes));
    tensors.push_back({name, dtype, shape, {}});
  }
  for (size_t i = 0; i < tensors.size(); ++i) tensors[i].bytes = storage[i];
  EXPECT_TRUE(WriteSafetensors(dst + "/model.safetensors", tensors, {{"format", "pt"}}).ok());
  return dst;
}

void ExpectReferenceLogits(const std::string& dir, double tolerance) {
  auto backend = OpenBackend(dir);
  const std::string ref_dir = GemmaTinyDir() + "/reference/tiny-mha";
  const auto ids = ReadJson(ref_dir + "/logits_fox.json")["ids"].get<std::vector<int32_t>>();
  const auto ref = ReadF32(ref_dir + "/logits_fox.f32.bin");
  std::vector<int32_t> blocks = {0, 1};
  SequenceStep step{ids, 0, blocks, LogitsWanted::kAll};
  StepLogits logits;
  ASSERT_TRUE(backend->Forward({&step, 1}, &logits).ok());
  double max_diff = 0;
  for (size_t i = 0; i < ref.size(); ++i) max_diff = std::max(max_diff, std::abs(double(logits.values[i]) - ref[i]));
  EXPECT_LT(max_diff, tolerance);
}

TEST(DTypeTest, F32CheckpointGivesReferenceLogits) { ExpectReferenceLogits(Reencode(DType::kF32, "f32"), 1e-4); }
TEST(DTypeTest, F16CheckpointGivesReferenceLogits) { ExpectReferenceLogits(Reencode(DType::kF16, "f16"), 1e-4); }

}  // namespace
}  // namespace gemma::testing
