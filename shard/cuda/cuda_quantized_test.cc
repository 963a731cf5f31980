// Quantized weights (int8, int4, fp8) on the CUDA backend. The kernels against the host's formats: the dequantize
// kernel gives ElementAt's values bit for bit, the streaming product of 1-8 rows their f32 sums within float
// rounding. Whole models: in f32 the backend over quantized weights gives the logits of the same backend over the
// weights dequantized (prompts through dequantize-and-GEMM, decode steps through the streaming kernel, replayed
// from graphs) and of the CPU's quantized kernels, within the CUDA conformance bound, at one rank and at two ranks
// on one GPU over a host collective; in bf16 it stays close to them. Label gpu: skipped without a device.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/collective/shm_collective.h"
#include "shard/cpu/cpu_backend.h"
#include "shard/cuda/cuda_backend.h"
#include "shard/cuda/cuda_test_support.h"
#include "shard/model/dtype.h"
#include "shard/model/model_weights.h"
#include "shard/model/quantize.h"
#include "shard/runtime/logits_comparison.h"
#include "tests/quantized_cases.h"
#include "tests/reference_helpers.h"

#ifdef GEMMA_HAVE_CUDA
#include <cuda_runtime.h>

#include "shard/cuda/quantized_kernels.h"
#endif

namespace gemma {
namespace {

using cuda_testing::HaveDevice;
using cuda_testing::Kv;
using testing::TinyModel;

#ifdef GEMMA_HAVE_CUDA
// A host matrix quantized by the loader's own code, and its copy on the device.
struct QuantizedOnBoth {
  std::vector<float> source;
  QuantizedMatrix host;
  void *codes = nullptr, *scales = nullptr, *zeros = nullptr;
  cuda::QuantMatrix q;
  ~QuantizedOnBoth() {
    for (void* p : {codes, scales, zeros}) cudaFree(p);
  }
};

cuda::QuantFormat ToQuant(WeightFormat f) {
  return f == WeightFormat::kInt8 ? cuda::QuantFormat::kInt8
                                  : (f == WeightFormat::kInt4 ? cuda::QuantFormat::kInt4 : cuda::QuantFormat::kFp8);
}

std::unique_ptr<QuantizedOnBoth> Make(WeightFormat format, int64_t rows, int64_t cols, int group, std::mt19937& rng) {
  auto m = std::make_unique<QuantizedOnBoth>();
  std::normal_distribution<float> n(0.0f, 0.05f);
  m->source.resize(static_cast<size_t>(rows * cols));
  for (float& x : m->source) x = n(rng);
  MatrixView src;
  src.format = WeightFormat::kF32;
  src.f32 = m->source.data();
  src.rows = rows;
  src.cols = cols;
  src.stride = cols;
  m->host = Quantize(src, format, group);
  const int64_t row_bytes = format == WeightFormat::kInt4 ? cols / 2 : cols;
  const int64_t groups = format == WeightFormat::kInt4 ? cols / group : 1;
  EXPECT_EQ(m->host.view.scale_stride, groups);
  EXPECT_EQ(cudaMalloc(&m->codes, rows * row_bytes), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(m->codes, m->host.view.codes, rows * row_bytes, cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&m->scales, rows * groups * 4), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(m->scales, m->host.view.scales, rows * groups * 4, cudaMemcpyHostToDevice), cudaSuccess);
  if (format == WeightFormat::kInt4) {
    EXPECT_EQ(cudaMalloc(&m->zeros, rows * groups * 4), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(m->zeros, m->host.view.zeros, rows * groups * 4, cudaMemcpyHostToDevice), cudaSuccess);
  }
  m->q.format = ToQuant(format);
  m->q.codes = static_cast<const uint8_t*>(m->codes);
  m->q.scales = static_cast<const float*>(m->scales);
  m->q.zeros = static_cast<const float*>(m->zeros);
  m->q.rows = rows;
  m->q.cols = cols;
  m->q.group_size = format == WeightFormat::kInt4 ? group : 0;
  return m;
}

template <typename T>
std::vector<T> FromDevice(const void* p, size_t count) {
  std::vector<T> v(count);
  EXPECT_EQ(cudaMemcpy(v.data(), p, count * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return v;
}

struct KernelCase {
  WeightFormat format;
  int64_t rows, cols;
  int group;
};

class QuantizedKernelTest : public ::testing::TestWithParam<KernelCase> {};

TEST_P(QuantizedKernelTest, DequantizeGivesTheHostsValuesBitForBit) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  const KernelCase& c = GetParam();
  std::mt19937 rng(7);
  auto m = Make(c.format, c.rows, c.cols, c.group, rng);
  const int64_t begin = 3, rows = c.rows - 5;
  void* out = nullptr;
  ASSERT_EQ(cudaMalloc(&out, rows * c.cols * 4), cudaSuccess);
  ASSERT_EQ(cuda::LaunchDequantize(m->q, begin, rows, cuda::Dtype::kF32, out, nullptr), cudaSuccess);
  const auto f32 = FromDevice<float>(out, rows * c.cols);
  ASSERT_EQ(cuda::LaunchDequantize(m->q, begin, rows, cuda::Dtype::kBf16, out, nullptr), cudaSuccess);
  const auto bf16 = FromDevice<uint16_t>(out, rows * c.cols);
  cudaFree(out);
  int64_t wrong = 0, wrong16 = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < c.cols; ++k) {
      const float want = ElementAt(m->host.view, begin + r, k);
      wrong += f32[r * c.cols + k] != want;
      wrong16 += bf16[r * c.cols + k] != F32ToBf16(want);
    }
  }
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(wrong16, 0);
  EXPECT_EQ(cuda::LaunchDequantize(m->q, 1, c.rows, cuda::Dtype::kF32, nullptr, nullptr), cudaErrorInvalidValue)
      << "rows past the matrix";
}

TEST_P(QuantizedKernelTest, StreamingProductsEqualTheDequantizedSums) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  const KernelCase& c = GetParam();
  std::mt19937 rng(11);
  auto m = Make(c.format, c.rows, c.cols, c.group, rng);
  ASSERT_TRUE(cuda::QuantizedGemmTakes(m->q, 1));
  EXPECT_FALSE(cuda::QuantizedGemmTakes(m->q, cuda::kQuantizedGemmMaxRows + 1));
  std::normal_distribution<float> n(0.0f, 1.0f);
  const int max_m = cuda::kQuantizedGemmMaxRows;
  std::vector<float> a(static_cast<size_t>(max_m * c.cols));
  for (float& x : a) x = n(rng);
  std::vector<uint16_t> a16(a.size());
  for (size_t i = 0; i < a.size(); ++i) a16[i] = F32ToBf16(a[i]);
  void *da = nullptr, *da16 = nullptr, *dc = nullptr;
  const int64_t ldc = c.rows + 3;
  ASSERT_EQ(cudaMalloc(&da, a.size() * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&da16, a.size() * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dc, max_m * ldc * 4), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(da, a.data(), a.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(da16, a16.data(), a16.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
  std::vector<float> w(static_cast<size_t>(c.rows * c.cols));
  for (int64_t r = 0; r < c.rows; ++r) DequantizeRow(m->host.view, r, w.data() + r * c.cols);
  double worst = 0;
  for (cuda::Dtype type : {cuda::Dtype::kF32, cuda::Dtype::kBf16}) {
    for (int M = 1; M <= max_m; ++M) {
      ASSERT_EQ(cuda::LaunchQuantizedGemm(m->q, type == cuda::Dtype::kF32 ? da : da16, type, M,
                                          static_cast<float*>(dc), ldc, nullptr),
                cudaSuccess);
      const auto got = FromDevice<float>(dc, M * ldc);
      for (int i = 0; i < M; ++i) {
        for (int64_t r = 0; r < c.rows; ++r) {
          double sum = 0, magnitude = 0;
          for (int64_t k = 0; k < c.cols; ++k) {
            const double x = type == cuda::Dtype::kF32 ? a[i * c.cols + k] : Bf16ToF32(a16[i * c.cols + k]);
            sum += x * w[r * c.cols + k];
            magnitude += std::abs(x * w[r * c.cols + k]);
          }
          const double err = std::abs(got[i * ldc + r] - sum) / (magnitude + 1e-30);
          worst = std::max(worst, err);
          ASSERT_LT(err, 1e-5) << "row " << i << " of " << M << ", output " << r << ": " << got[i * ldc + r]
                               << " against " << sum;
        }
      }
    }
  }
  RecordProperty("worst_relative_error", absl::StrCat(worst));
  for (void* p : {da, da16, dc}) cudaFree(p);
}

TEST_P(QuantizedKernelTest, EmbeddingRowsAreTheDequantizedRowsScaled) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  const KernelCase& c = GetParam();
  std::mt19937 rng(13);
  auto m = Make(c.format, c.rows, c.cols, c.group, rng);
  // The rank's rows begin at 10: a token below it or past its rows reads as zeros.
  const std::vector<int32_t> tokens = {10, 12, static_cast<int32_t>(c.rows + 9), 9, static_cast<int32_t>(c.rows + 10)};
  void *dt = nullptr, *dx = nullptr;
  ASSERT_EQ(cudaMalloc(&dt, tokens.size() * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dx, tokens.size() * c.cols * 4), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dt, tokens.data(), tokens.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cuda::LaunchEmbedQuantized(m->q, static_cast<const int32_t*>(dt), static_cast<int>(tokens.size()), 10, 2.0f,
                                       static_cast<float*>(dx), nullptr),
            cudaSuccess);
  const auto x = FromDevice<float>(dx, tokens.size() * c.cols);
  for (size_t t = 0; t < tokens.size(); ++t) {
    const int64_t local = tokens[t] - 10;
    for (int64_t k = 0; k < c.cols; ++k) {
      const float want = local >= 0 && local < c.rows ? ElementAt(m->host.view, local, k) * 2.0f : 0.0f;
      ASSERT_EQ(x[t * c.cols + k], want) << "token " << tokens[t] << ", column " << k;
    }
  }
  for (void* p : {dt, dx}) cudaFree(p);
}

INSTANTIATE_TEST_SUITE_P(Formats, QuantizedKernelTest,
                         ::testing::Values(KernelCase{WeightFormat::kInt8, 203, 1024, 0},
                                           KernelCase{WeightFormat::kInt8, 37, 48, 0},
                                           KernelCase{WeightFormat::kFp8, 203, 1024, 0},
                                           KernelCase{WeightFormat::kFp8, 37, 2080, 0},
                                           KernelCase{WeightFormat::kInt4, 203, 1024, 128},
                                           KernelCase{WeightFormat::kInt4, 37, 96, 32},
                                           KernelCase{WeightFormat::kInt4, 70, 2560, 64}),
                         [](const ::testing::TestParamInfo<KernelCase>& info) {
                           return absl::StrCat(WeightFormatName(info.param.format), "_", info.param.rows, "x",
                                               info.param.cols);
                         });

TEST(QuantizedKernelShapesTest, RowsOfPartialLoadsGoToTheDequantizingPath) {
  cuda::QuantMatrix q;
  q.format = cuda::QuantFormat::kInt8;
  q.cols = 40;  // not whole 16-byte loads
  EXPECT_FALSE(cuda::QuantizedGemmTakes(q, 1));
  q.cols = 48;
  EXPECT_TRUE(cuda::QuantizedGemmTakes(q, 8));
  q.format = cuda::QuantFormat::kInt4;
  q.group_size = 32;
  q.cols = 48;  // 24 bytes a row
  EXPECT_FALSE(cuda::QuantizedGemmTakes(q, 1));
}
#endif  // GEMMA_HAVE_CUDA

// Whole models. A prompt of 68 ids (past tiny-g2's 16-key window four times; through dequantize-and-GEMM), 12 more
// (the streaming kernel in chunks of 8 and 4 rows), every row's logits, then three decode steps; rank 0's logits in
// order.
using ModelCase = testing::QuantCase;

enum class Engine { kCudaF32, kCudaBf16, kCpu };

absl::Status RunRank(std::shared_ptr<const Checkpoint> ckpt, const ModelCase& c, int rank, const std::string& group,
                     Engine engine, bool dequantize, std::vector<float>* logits, int64_t dequant_scratch_bytes = 0) {
  auto tp = TensorParallel::Create(ckpt->config(), rank, c.world);
  if (!tp.ok()) return tp.status();
  WeightLoadOptions load;
  load.precision = c.precision;
  load.int4_group_size = c.group;
  auto loaded = ModelWeights::Load(ckpt, *tp, load);
  if (!loaded.ok()) return loaded.status();
  std::shared_ptr<const ModelWeights> weights(std::move(*loaded));
  if (dequantize) weights = weights->Dequantized();
  std::shared_ptr<HostCollective> collective;
  if (c.world > 1) {
    auto made = CreateShmCollective({rank, c.world, group, std::chrono::milliseconds(30000)});
    if (!made.ok()) return made.status();
    collective = std::shared_ptr<HostCollective>(std::move(*made));
  }
  std::unique_ptr<Backend> backend;
  if (engine == Engine::kCpu) {
    KvCacheOptions kv;
    kv.num_blocks = 32;
    auto b = CpuBackend::Create(weights, kv, collective);
    if (!b.ok()) return b.status();
    backend = std::move(*b);
  } else {
    CudaBackendOptions o;
    o.precision = engine == Engine::kCudaF32 ? CudaPrecision::kF32 : CudaPrecision::kBf16;
    o.cuda_graphs = c.world == 1;  // ranks that are threads of one process run steps as they are
    if (dequant_scratch_bytes > 0) o.dequant_scratch_bytes = dequant_scratch_bytes;
    CudaCollective cc;
    if (collective) cc = collective;
    auto b = CreateCudaBackend(weights, Kv(512), o, std::move(cc));
    if (!b.ok()) return b.status();
    backend = std::move(*b);
  }
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> id(3, ckpt->config().vocab_size - 1);
  std::vector<int32_t> prompt(80);
  for (int32_t& t : prompt) t = id(rng);
  std::vector<int32_t> blocks(8);
  for (int i = 0; i < 8; ++i) blocks[i] = i;
  StepLogits out;
  logits->clear();
  for (const auto [begin, end] : {std::pair{0, 68}, std::pair{68, 80}}) {
    SequenceStep step{std::span<const int32_t>(prompt).subspan(begin, end - begin), begin, blocks, LogitsWanted::kAll};
    if (auto s = backend->Forward({&step, 1}, &out); !s.ok()) return s;
    logits->insert(logits->end(), out.values.begin(), out.values.end());
  }
  for (int i = 0; i < 3; ++i) {
    const int32_t token = prompt[i + 5];
    SequenceStep decode{{&token, 1}, static_cast<int32_t>(prompt.size()) + i, blocks, LogitsWanted::kLast};
    if (auto s = backend->Forward({&decode, 1}, &out); !s.ok()) return s;
    logits->insert(logits->end(), out.values.begin(), out.values.end());
  }
  return absl::OkStatus();
}

std::vector<float> RunGroup(std::shared_ptr<const Checkpoint> ckpt, const ModelCase& c, Engine engine, bool dequantize,
                            int64_t dequant_scratch_bytes = 0) {
  static int groups = 0;
  static const uint32_t salt = std::random_device{}();
  const std::string group = absl::StrCat("cuda_quant_", ::getpid(), "_", salt, "_", groups++);
  std::vector<std::vector<float>> logits(c.world);
  std::vector<absl::Status> status(c.world);
  std::vector<std::thread> ranks;
  for (int r = 0; r < c.world; ++r) {
    ranks.emplace_back(
        [&, r] { status[r] = RunRank(ckpt, c, r, group, engine, dequantize, &logits[r], dequant_scratch_bytes); });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < c.world; ++r) EXPECT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r];
  for (int r = 1; r < c.world; ++r) EXPECT_EQ(logits[r], logits[0]) << "rank " << r;
  return logits[0];
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) worst = std::max(worst, std::abs(double(a[i]) - b[i]));
  return worst;
}

class CudaQuantizedModelTest : public ::testing::TestWithParam<ModelCase> {};

TEST_P(CudaQuantizedModelTest, QuantizedKernelsGiveTheDequantizedWeightsLogits) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  const ModelCase& c = GetParam();
  const std::string root = c.model.root();
  ASSERT_FALSE(root.empty()) << "test data for " << c.model.name << " is absent";
  auto opened = Checkpoint::Open(root + "/" + c.model.name);
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::shared_ptr<const Checkpoint> ckpt(std::move(*opened));
  // The CUDA conformance bound on f32 logits; tiny-g2-qscale's sharp logits amplify rounding tenfold.
  const double bound = std::max(1e-3, 10 * c.model.tolerance);
  const std::vector<float> quantized = RunGroup(ckpt, c, Engine::kCudaF32, false);
  const std::vector<float> dequantized = RunGroup(ckpt, c, Engine::kCudaF32, true);
  const std::vector<float> cpu = RunGroup(ckpt, c, Engine::kCpu, false);
  const double vs_dequantized = MaxAbsDiff(quantized, dequantized), vs_cpu = MaxAbsDiff(quantized, cpu);
  EXPECT_LT(vs_dequantized, bound);
  EXPECT_LT(vs_cpu, bound);
  // bf16: the small-batch kernel sums f32 weights, the GEMM path rounds them to bf16; both read bf16 activations.
  const std::vector<float> q16 = RunGroup(ckpt, c, Engine::kCudaBf16, false);
  const int vocab = ckpt->config().vocab_size;
  const int rows = static_cast<int>(quantized.size()) / vocab;
  const LogitsComparison b = CompareLogits(quantized.data(), q16.data(), rows, vocab);
  std::printf("%s %s tp%d: f32 max |quantized - dequantized| %.3g, |cuda - cpu| %.3g; bf16 against f32: mean KL %.3g, "
              "top-1 %d/%d, largest log-prob change %.3g\n",
              c.model.name.c_str(), WeightPrecisionName(c.precision), c.world, vs_dequantized, vs_cpu, b.mean_kl,
              b.top1_agreements, rows, b.max_logprob_change);
  // Not top-1 agreement: random tiny weights give near-uniform logits, whose top token flips at any rounding.
  // bf16 alone moves these log-probs by up to 0.05 (0.5 on tiny-g2-qscale, cuda_backend_test); the prompt path's
  // weights are rounded to bf16 as well here.
  EXPECT_LT(b.mean_kl, 0.01);
  EXPECT_LT(b.max_logprob_change, c.model.tolerance > 1e-4 ? 1.0 : 0.1);
  RecordProperty("max_abs_vs_dequantized", absl::StrCat(vs_dequantized));
  RecordProperty("max_abs_vs_cpu", absl::StrCat(vs_cpu));
}

INSTANTIATE_TEST_SUITE_P(TinyModels, CudaQuantizedModelTest, ::testing::ValuesIn(testing::QuantCases()),
                         testing::QuantCaseName);

// A scratch of 64 KiB holds a few rows of the tiny models' matrices: every dequantized product runs slice by slice
// (the output projection's 4096 rows in many), and gives the logits of whole-matrix slices.
TEST(CudaQuantizedScratchTest, ProductsInSlicesEqualWholeMatrices) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  const TinyModel& model = testing::TinyModels()[0];
  auto opened = Checkpoint::Open(model.root() + "/" + model.name);
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::shared_ptr<const Checkpoint> ckpt(std::move(*opened));
  for (WeightPrecision p : {WeightPrecision::kInt8, WeightPrecision::kInt4, WeightPrecision::kFp8}) {
    const ModelCase c{model, p, 1};
    const auto whole = RunGroup(ckpt, c, Engine::kCudaF32, false);
    const auto sliced = RunGroup(ckpt, c, Engine::kCudaF32, false, int64_t{64} << 10);
    EXPECT_LT(MaxAbsDiff(whole, sliced), 1e-4) << WeightPrecisionName(p);
  }
}

}  // namespace
}  // namespace gemma
