// LoRA adapters on the CUDA backend (f32, so that values compare): gemma-lora-tiny's reference logits, scores and
// greedy generations of the adapted models within 1e-3; the CPU backend's results; mixed batches (rows of two
// adapters and a base row, in a prompt step and in decode steps replayed from graphs) whose base row is bit for bit
// the row of the same batch without adapters; two ranks on one GPU over a host collective against one rank; and
// the adapter slots: eviction and upload again, and the limits refused by name. Label gpu: skipped without a device.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/collective/shm_collective.h"
#include "shard/cpu/cpu_backend.h"
#include "shard/cuda/cuda_backend.h"
#include "shard/cuda/cuda_test_support.h"
#include "shard/model/dtype.h"
#include "shard/model/lora_loader.h"
#include "shard/model/published_shapes.h"
#include "shard/runtime/adapter_store.h"
#include "tests/reference_helpers.h"
#include "tests/testdata.h"

#ifdef GEMMA_HAVE_CUDA
#include "shard/cuda/cuda_adapters.h"
#endif

namespace gemma {
namespace {

using cuda_testing::HaveDevice;
using cuda_testing::Kv;
using cuda_testing::LoadWeights;
using testing::GemmaLoraTinyDir;
using testing::GemmaTinyDir;
using testing::ReadF32;
using testing::ReadJson;

constexpr double kTolerance = 1e-3;  // f32 logits, as the CUDA conformance suite holds them

struct AdapterCase {
  std::string adapter, base, reference;  // gemma-lora-tiny folder, gemma-tiny checkpoint, reference folder
};
void PrintTo(const AdapterCase& c, std::ostream* os) { *os << c.adapter << " on " << c.base; }
const AdapterCase kCases[] = {{"mha-r8-all", "tiny-mha", "mha-r8-all"},
                              {"mha-r4-qv", "tiny-mha", "mha-r4-qv"},
                              {"mqa-r8-rslora", "tiny-mqa", "mqa-r8-rslora"}};

double MaxAbsDiff(const float* a, const float* b, size_t n) {
  double worst = 0;
  for (size_t i = 0; i < n; ++i) worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
  return worst;
}

std::vector<int32_t> Range(int first, int count) {
  std::vector<int32_t> b(count);
  for (int i = 0; i < count; ++i) b[i] = first + i;
  return b;
}

std::unique_ptr<Backend> OpenCudaLora(const std::string& dir, int slots = 8, int max_rank = 16, bool graphs = true) {
  CudaBackendOptions o;
  o.precision = CudaPrecision::kF32;
  o.cuda_graphs = graphs;
  o.lora_slots = slots;
  o.lora_max_rank = max_rank;
  auto b = CreateCudaBackend(LoadWeights(dir), Kv(4096), o);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? std::move(*b) : nullptr;
}

// Adapters of one model, registered in a store as the worker does (ids 1, 2, ...).
struct Adapters {
  std::unique_ptr<AdapterStore> store;
  std::vector<uint32_t> ids;
  std::vector<std::shared_ptr<const LoraAdapter>> loaded;
};
Adapters Register(const ModelConfig& config, const std::vector<std::string>& folders) {
  Adapters a;
  a.store = std::make_unique<AdapterStore>(LoraLoaderFor(config, *TensorParallel::Create(config, 0, 1)), 8);
  for (const std::string& f : folders) {
    auto id = a.store->Register(f, GemmaLoraTinyDir() + "/" + f);
    EXPECT_TRUE(id.ok()) << id.status();
    if (!id.ok()) continue;
    a.ids.push_back(*id);
    auto got = a.store->Get(*id);
    EXPECT_TRUE(got.ok()) << got.status();
    a.loaded.push_back(*got);
  }
  return a;
}

class CudaLoraReferenceTest : public ::testing::TestWithParam<AdapterCase> {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device present";
    ASSERT_FALSE(GemmaLoraTinyDir().empty()) << "gemma-lora-tiny is absent";
    backend_ = OpenCudaLora(GemmaTinyDir() + "/" + GetParam().base);
    ASSERT_NE(backend_, nullptr);
    adapters_ = Register(backend_->config(), {GetParam().adapter});
    ASSERT_EQ(adapters_.loaded.size(), 1u);
  }
  std::string RefDir() const { return GemmaLoraTinyDir() + "/reference/" + GetParam().reference; }

  std::unique_ptr<Backend> backend_;
  Adapters adapters_;
};

// All positions of each reference prompt in one step: within 1e-3 of the merged reference, within 1e-3 of the CPU
// backend, and far from the base model (the adapter is applied).
TEST_P(CudaLoraReferenceTest, LogitsMatchTheMergedReferenceAndTheCpu) {
  auto cpu = testing::OpenBackend(GemmaTinyDir() + "/" + GetParam().base);
  const int vocab = backend_->config().vocab_size;
  for (const char* prompt : {"fox", "rand37", "rand200"}) {
    const auto ids = ReadJson(RefDir() + "/logits_" + prompt + ".json")["ids"].get<std::vector<int32_t>>();
    const auto ref = ReadF32(RefDir() + "/logits_" + prompt + ".f32.bin");
    ASSERT_EQ(ref.size(), ids.size() * vocab);
    const auto blocks = Range(0, static_cast<int>(ids.size()) / backend_->kv_block_size() + 1);
    SequenceStep adapted{ids, 0, blocks, LogitsWanted::kAll};
    adapted.adapter = adapters_.loaded[0].get();
    SequenceStep plain{ids, 0, blocks, LogitsWanted::kAll};
    StepLogits with, without, on_cpu;
    ASSERT_TRUE(backend_->Forward({&adapted, 1}, &with).ok());
    ASSERT_TRUE(backend_->Forward({&plain, 1}, &without).ok());
    ASSERT_TRUE(cpu->Forward({&adapted, 1}, &on_cpu).ok());
    ASSERT_EQ(with.values.size(), ref.size());
    const double worst = MaxAbsDiff(with.values.data(), ref.data(), ref.size());
    const double vs_cpu = MaxAbsDiff(with.values.data(), on_cpu.values.data(), ref.size());
    EXPECT_LT(worst, kTolerance) << prompt;
    EXPECT_LT(vs_cpu, kTolerance) << prompt;
    EXPECT_GT(MaxAbsDiff(without.values.data(), ref.data(), ref.size()), 0.1) << prompt;
    RecordProperty(absl::StrCat("max_abs_logit_diff_", prompt), absl::StrCat(worst));
    std::printf("%s %s: max |logit - reference| %.3g, max |cuda - cpu| %.3g\n", GetParam().adapter.c_str(), prompt,
                worst, vs_cpu);
  }
}

// Through the engine: scores, and greedy generations of all prompts in one batch (prompts in chunks of 7, then
// decode steps, which replay a LoRA graph from their second step of a batch size).
TEST_P(CudaLoraReferenceTest, ScoresAndGreedyGenerationsMatchOnTheEngine) {
  testing::ExpectLoraScoresAndGenerations(backend_.get(), adapters_.store.get(), adapters_.ids[0], RefDir(),
                                          kTolerance);
  EXPECT_GT(CudaGraphsCaptured(*backend_), 0) << "no decode step replayed a graph";
}

INSTANTIATE_TEST_SUITE_P(Adapters, CudaLoraReferenceTest, ::testing::ValuesIn(kCases), [](const auto& info) {
  std::string n = info.param.adapter;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
});

class CudaLoraTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device present";
    ASSERT_FALSE(GemmaLoraTinyDir().empty()) << "gemma-lora-tiny is absent";
    dir_ = GemmaTinyDir() + "/tiny-mha";
    ids_ = ReadJson(GemmaLoraTinyDir() + "/reference/mha-r8-all/logits_rand37.json")["ids"].get<std::vector<int32_t>>();
  }
  std::string dir_;
  std::vector<int32_t> ids_;
};

// Rows of two adapters and a base row in one prompt step, then in decode steps (the second one of a batch size
// replays a graph): the base row is bit for bit the same row of the batch without adapters, and each adapter row
// matches its run alone and the CPU's mixed batch.
TEST_F(CudaLoraTest, MixedBatchesLeaveTheBaseRowBitIdentical) {
  auto gpu = OpenCudaLora(dir_);
  auto base_gpu = OpenCudaLora(dir_);
  auto cpu = testing::OpenBackend(dir_);
  ASSERT_NE(gpu, nullptr);
  ASSERT_NE(base_gpu, nullptr);
  Adapters a = Register(gpu->config(), {"mha-r8-all", "mha-r4-qv"});
  ASSERT_EQ(a.loaded.size(), 2u);
  const int vocab = gpu->config().vocab_size;
  const int per = static_cast<int>(ids_.size() + 8) / gpu->kv_block_size() + 1;
  const std::vector<std::vector<int32_t>> tables = {Range(0, per), Range(per, per), Range(2 * per, per)};
  const LoraAdapter* which[] = {a.loaded[0].get(), a.loaded[1].get(), nullptr};
  std::vector<SequenceStep> mixed, plain;
  for (int i = 0; i < 3; ++i) {
    SequenceStep s{ids_, 0, tables[i], LogitsWanted::kAll};
    plain.push_back(s);
    s.adapter = which[i];
    mixed.push_back(s);
  }
  StepLogits m, p, c;
  ASSERT_TRUE(gpu->Forward(mixed, &m).ok());
  ASSERT_TRUE(base_gpu->Forward(plain, &p).ok());
  ASSERT_TRUE(cpu->Forward(mixed, &c).ok());
  const size_t row = ids_.size() * vocab;
  EXPECT_EQ(0, std::memcmp(m.Row(m.row_begin[2]), p.Row(p.row_begin[2]), row * 4)) << "the base row changed";
  for (int i = 0; i < 2; ++i) {
    EXPECT_LT(MaxAbsDiff(m.Row(m.row_begin[i]), c.Row(c.row_begin[i]), row), kTolerance) << "adapter row " << i;
    EXPECT_GT(MaxAbsDiff(m.Row(m.row_begin[i]), p.Row(p.row_begin[i]), row), 0.1) << "adapter row " << i;
    StepLogits alone;
    ASSERT_TRUE(gpu->Forward({&mixed[i], 1}, &alone).ok());
    EXPECT_LT(MaxAbsDiff(m.Row(m.row_begin[i]), alone.values.data(), row), 1e-4) << "adapter row " << i;
  }
  // Decode: four steps of one token per row, the adapters' rows and the base row together; the batch without
  // adapters runs on its own backend, over the same cache contents.
  int32_t next = 99;
  for (int step = 0; step < 4; ++step, ++next) {
    const int32_t pos = static_cast<int32_t>(ids_.size()) + step;
    std::vector<SequenceStep> dm, dp;
    const int32_t token[] = {next};
    for (int i = 0; i < 3; ++i) {
      SequenceStep s{token, pos, tables[i], LogitsWanted::kLast};
      dp.push_back(s);
      s.adapter = which[i];
      dm.push_back(s);
    }
    StepLogits lm, lp, lc;
    ASSERT_TRUE(gpu->Forward(dm, &lm).ok()) << "step " << step;
    ASSERT_TRUE(base_gpu->Forward(dp, &lp).ok()) << "step " << step;
    ASSERT_TRUE(cpu->Forward(dm, &lc).ok()) << "step " << step;
    EXPECT_EQ(0, std::memcmp(lm.Row(2), lp.Row(2), vocab * 4)) << "the base row changed at decode step " << step;
    for (int i = 0; i < 2; ++i) EXPECT_LT(MaxAbsDiff(lm.Row(i), lc.Row(i), vocab), kTolerance) << "step " << step;
  }
  EXPECT_GT(CudaGraphsCaptured(*gpu), 0) << "no LoRA decode step replayed a graph";
}

// One slot: adapters take turns in it (each turn uploads again) and compute what they computed the first time.
TEST_F(CudaLoraTest, AnEvictedAdapterIsUploadedAgainAndComputesTheSame) {
  auto gpu = OpenCudaLora(dir_, /*slots=*/1);
  ASSERT_NE(gpu, nullptr);
  Adapters a = Register(gpu->config(), {"mha-r8-all", "mha-r4-qv"});
  ASSERT_EQ(a.loaded.size(), 2u);
  const auto blocks = Range(0, static_cast<int>(ids_.size()) / gpu->kv_block_size() + 1);
  std::vector<float> first[2];
  for (int turn = 0; turn < 4; ++turn) {
    SequenceStep s{ids_, 0, blocks, LogitsWanted::kAll};
    s.adapter = a.loaded[turn % 2].get();
    StepLogits out;
    ASSERT_TRUE(gpu->Forward({&s, 1}, &out).ok()) << "turn " << turn;
    if (turn < 2) {
      first[turn] = out.values;
    } else {
      EXPECT_EQ(out.values, first[turn % 2]) << "turn " << turn;
    }
  }
  EXPECT_NE(first[0], first[1]);
}

TEST_F(CudaLoraTest, SlotLimitsAreRefusedByName) {
  const auto blocks = Range(0, static_cast<int>(ids_.size()) / 16 + 1);
  auto check = [&](Backend& b, std::vector<const LoraAdapter*> adapters, absl::StatusCode code, const std::string& says) {
    std::vector<std::vector<int32_t>> tables;
    std::vector<SequenceStep> batch;
    for (size_t i = 0; i < adapters.size(); ++i) tables.push_back(Range(static_cast<int>(i * blocks.size()), blocks.size()));
    for (size_t i = 0; i < adapters.size(); ++i) {
      SequenceStep s{ids_, 0, tables[i], LogitsWanted::kLast};
      s.adapter = adapters[i];
      batch.push_back(s);
    }
    StepLogits out;
    const absl::Status s = b.Forward(batch, &out);
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_NE(s.message().find(says), std::string::npos) << s;
  };
  auto none = OpenCudaLora(dir_, /*slots=*/0);
  auto one = OpenCudaLora(dir_, /*slots=*/1);
  auto low = OpenCudaLora(dir_, /*slots=*/2, /*max_rank=*/4);
  ASSERT_TRUE(none && one && low);
  Adapters a = Register(one->config(), {"mha-r8-all", "mha-r4-qv"});
  ASSERT_EQ(a.loaded.size(), 2u);
  // INVALID_ARGUMENT on every rank: the rows fail, the group goes on (a follower keeps serving on that code).
  check(*none, {a.loaded[0].get()}, absl::StatusCode::kInvalidArgument, "reserved no adapter slots");
  check(*one, {a.loaded[0].get(), a.loaded[1].get()}, absl::StatusCode::kInvalidArgument, "1 adapter slots");
  check(*low, {a.loaded[0].get()}, absl::StatusCode::kInvalidArgument, "has rank 8");
  // The rank-4 adapter fits the low slots, and a failed step left them usable.
  check(*low, {a.loaded[1].get()}, absl::StatusCode::kOk, "");
}

#ifdef GEMMA_HAVE_CUDA
// Adapter memory is reserved at start, before the KV cache is planned: the slots at their rank, their table, the
// step scratch and the steering vector; 0 slots reserve no slot memory.
TEST_F(CudaLoraTest, AdapterMemoryIsReservedAtStart) {
  auto three = OpenCudaLora(dir_, /*slots=*/3, /*max_rank=*/8);
  auto none = OpenCudaLora(dir_, /*slots=*/0);
  ASSERT_TRUE(three && none);
  const ModelConfig& c = three->config();
  const TensorParallel tp = *TensorParallel::Create(c, 0, 1);
  auto with = CudaMemoryReportOf(*three), without = CudaMemoryReportOf(*none);
  ASSERT_TRUE(with.ok() && without.ok());
  const int64_t slots = 3 * cuda::CudaAdapters::SlotBytes(c, tp, 8);
  const int64_t table = int64_t{3} * c.num_layers * kNumLoraTargets * sizeof(cuda::LoraDeviceEntry);
  const int64_t steer = int64_t{c.hidden_size} * 4;
  EXPECT_EQ(with->adapters, slots + table + cuda::CudaAdapters::ScratchBytes(with->limits.max_tokens) + steer);
  EXPECT_EQ(without->adapters, steer);
}
#endif

#ifdef GEMMA_HAVE_CUDA
// The shrink and expand kernels alone against a double-precision host sum, at shapes the tiny models never reach:
// inputs of several 512-column tiles and splits (with empty splits), ranks past one 16-row group, sizes that are not
// multiples of 4 (the scalar paths), an output row that is not 16-byte aligned, f32 and bf16 x with rows longer than
// the input, 1..8 tokens of a chunk among other tokens of the step (left untouched), and a grid with more chunks
// and rank groups than the step holds.
TEST(LoraKernelTest, ShrinkAndExpandEqualTheHostSums) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  struct Shape {
    int64_t in, out;
    int rank, count;
    cuda::Dtype x_type;
    int64_t out_offset;  // floats: an output not 16-byte aligned
  };
  const Shape shapes[] = {{2305, 1027, 17, 5, cuda::Dtype::kF32, 1}, {8193, 4096, 64, 8, cuda::Dtype::kBf16, 0},
                          {24576, 3072, 16, 3, cuda::Dtype::kBf16, 0}, {96, 128, 1, 1, cuda::Dtype::kF32, 2}};
  std::mt19937 rng(23);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const Shape& sh : shapes) {
    SCOPED_TRACE(::testing::Message() << "in " << sh.in << ", out " << sh.out << ", rank " << sh.rank << ", tokens "
                                      << sh.count);
    const int T = sh.count + 3;  // the step's tokens; the chunk takes every one but the first three
    const int64_t ldx = sh.in + 8, ldo = sh.out + 5;
    std::vector<float> a(sh.rank * sh.in), bt(sh.rank * sh.out), x(T * ldx), out(T * ldo + sh.out_offset);
    for (auto* v : {&a, &bt, &x, &out}) {
      for (float& f : *v) f = normal(rng);
    }
    std::vector<uint16_t> x16(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      x16[i] = F32ToBf16(x[i]);
      if (sh.x_type == cuda::Dtype::kBf16) x[i] = Bf16ToF32(x16[i]);  // the values the kernel reads
    }
    std::vector<int32_t> tokens(sh.count);
    for (int c = 0; c < sh.count; ++c) tokens[c] = 3 + c;
    const float scaling = 0.5f;
    const int64_t split_stride = int64_t{cuda::kLoraChunkTokens} * cuda::kLoraMaxRank;
    auto device = [](const void* host, size_t bytes) {
      void* p = nullptr;
      EXPECT_EQ(cudaMalloc(&p, bytes), cudaSuccess);
      EXPECT_EQ(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice), cudaSuccess);
      return p;
    };
    void* da = device(a.data(), a.size() * 4);
    void* dbt = device(bt.data(), bt.size() * 4);
    void* dx = sh.x_type == cuda::Dtype::kF32 ? device(x.data(), x.size() * 4) : device(x16.data(), x16.size() * 2);
    void* dout = device(out.data(), out.size() * 4);
    const cuda::LoraDeviceEntry entry{static_cast<const float*>(da), static_cast<const float*>(dbt), sh.rank, scaling};
    void* dentry = device(&entry, sizeof(entry));
    const int32_t meta[] = {1, 0, 0, sh.count};  // chunks, the chunk's slot, first entry, count
    void* dmeta = device(meta, sizeof(meta));
    void* dtokens = device(tokens.data(), tokens.size() * 4);
    void* dpartial = nullptr;
    ASSERT_EQ(cudaMalloc(&dpartial, cuda::kLoraMaxSplits * split_stride * 4), cudaSuccess);
    const int32_t* m = static_cast<const int32_t*>(dmeta);
    const cuda::LoraStepLayout layout{m, m + 1, m + 2, m + 3, static_cast<const int32_t*>(dtokens)};
    const auto* entries = static_cast<const cuda::LoraDeviceEntry*>(dentry);
    float* partial = static_cast<float*>(dpartial);
    ASSERT_EQ(cuda::LaunchLoraShrink(dx, ldx, sh.in, sh.x_type, layout, entries, 1, /*max_chunks=*/3,
                                     /*max_rank=*/cuda::kLoraMaxRank, partial, split_stride, nullptr),
              cudaSuccess);
    ASSERT_EQ(cuda::LaunchLoraExpand(partial, cuda::LoraSplits(sh.in), split_stride, layout, entries, 1, 3,
                                     static_cast<float*>(dout) + sh.out_offset, ldo, sh.out, nullptr),
              cudaSuccess);
    std::vector<float> got(out.size());
    ASSERT_EQ(cudaMemcpy(got.data(), dout, got.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    for (void* p : {da, dbt, dx, dout, dentry, dmeta, dtokens, dpartial}) cudaFree(p);
    for (int t = 0; t < T; ++t) {
      const bool adapted = t >= 3;
      std::vector<double> shrunk(sh.rank), size(sh.rank);
      for (int j = 0; adapted && j < sh.rank; ++j) {
        for (int64_t i = 0; i < sh.in; ++i) {
          shrunk[j] += double(x[t * ldx + i]) * a[j * sh.in + i];
          size[j] += std::abs(double(x[t * ldx + i]) * a[j * sh.in + i]);
        }
      }
      for (int64_t o = 0; o < sh.out; ++o) {
        const int64_t at = sh.out_offset + t * ldo + o;
        if (!adapted) {
          ASSERT_EQ(got[at], out[at]) << "token " << t << " has no adapter but changed at " << o;
          continue;
        }
        double want = out[at], bound = std::abs(out[at]);
        for (int j = 0; j < sh.rank; ++j) {
          want += scaling * shrunk[j] * bt[j * sh.out + o];
          bound += scaling * size[j] * std::abs(bt[j * sh.out + o]);
        }
        ASSERT_NEAR(got[at], want, 1e-5 * bound + 1e-6) << "token " << t << ", output " << o;
      }
    }
  }
}
#endif

// Two ranks sharing one GPU through a host collective (graphs off: ranks are threads of one process), A and B
// sliced as the CPU slices them: the adapted logits equal one rank's within the reordered sums' rounding, and a
// base row beside them is unchanged by them.
TEST_F(CudaLoraTest, TwoRanksOverAHostCollectiveEqualOneRank) {
  auto opened = Checkpoint::Open(GemmaTinyDir() + "/tiny-mqa");
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::shared_ptr<const Checkpoint> ckpt(std::move(*opened));
  const auto blocks = Range(0, static_cast<int>(ids_.size()) / 16 + 1);
  const auto blocks2 = Range(static_cast<int>(blocks.size()), static_cast<int>(blocks.size()));
  const std::string name = absl::StrCat("cuda-lora-tp-", ::getpid());
  StepLogits logits[2], base[2];
  absl::Status status[2];
  auto run = [&](int rank, int world, StepLogits* out, StepLogits* base_out) -> absl::Status {
    auto tp = TensorParallel::Create(ckpt->config(), rank, world);
    if (!tp.ok()) return tp.status();
    auto w = ModelWeights::Load(ckpt, *tp);
    if (!w.ok()) return w.status();
    auto adapter = LoadLoraAdapter(GemmaLoraTinyDir() + "/mqa-r8-rslora", ckpt->config(), *tp);
    if (!adapter.ok()) return adapter.status();
    CudaBackendOptions o;
    o.precision = CudaPrecision::kF32;
    o.cuda_graphs = false;
    o.lora_slots = 1;
    CudaCollective collective;
    if (world > 1) {
      auto c = CreateShmCollective({rank, world, name, std::chrono::milliseconds(30000)});
      if (!c.ok()) return c.status();
      collective = std::shared_ptr<HostCollective>(std::move(*c));
    }
    auto b = CreateCudaBackend(std::shared_ptr<const ModelWeights>(std::move(*w)), Kv(4096), o, collective);
    if (!b.ok()) return b.status();
    SequenceStep steps[2] = {{ids_, 0, blocks, LogitsWanted::kAll}, {ids_, 0, blocks2, LogitsWanted::kAll}};
    steps[0].adapter = adapter->get();
    if (auto s = (*b)->Forward(steps, out); !s.ok()) return s;
    steps[0].adapter = nullptr;
    return (*b)->Forward(steps, base_out);
  };
  std::thread follower([&] { status[1] = run(1, 2, &logits[1], &base[1]); });
  status[0] = run(0, 2, &logits[0], &base[0]);
  follower.join();
  ASSERT_TRUE(status[0].ok()) << status[0];
  ASSERT_TRUE(status[1].ok()) << status[1];
  StepLogits one, one_base;
  ASSERT_TRUE(run(0, 1, &one, &one_base).ok());
  const int vocab = ckpt->config().vocab_size;
  const size_t row = ids_.size() * vocab;
  EXPECT_EQ(logits[0].values, logits[1].values);
  EXPECT_LT(MaxAbsDiff(logits[0].values.data(), one.values.data(), 2 * row), 1e-4);
  EXPECT_GT(MaxAbsDiff(logits[0].values.data(), base[0].values.data(), row), 0.1) << "the adapter was not applied";
  // The base row is the same with the adapter row beside it as without.
  EXPECT_EQ(0, std::memcmp(logits[0].Row(logits[0].row_begin[1]), base[0].Row(base[0].row_begin[1]), row * 4));
}

#ifdef GEMMA_HAVE_CUDA
// The slot sizes docs/LORA.md gives (plain arithmetic: runs without a device): every projection of every layer at
// the slot rank, f32, this rank's slices.
TEST(CudaLoraSlotsTest, SlotBytesAreThoseTheDocsGive) {
  auto two = ShapeNamed("2b"), seven = ShapeNamed("7b");
  ASSERT_TRUE(two.ok() && seven.ok());
  const TensorParallel one2 = *TensorParallel::Create(*two, 0, 1), one7 = *TensorParallel::Create(*seven, 0, 1);
  EXPECT_EQ(cuda::CudaAdapters::SlotBytes(*two, one2, 16), int64_t{68096} * 16 * 4 * 18);    // 75 MiB
  EXPECT_EQ(cuda::CudaAdapters::SlotBytes(*seven, one7, 16), int64_t{111616} * 16 * 4 * 28);  // 191 MiB
  // At TP 2 each rank holds half of every sliced side and all of the other: q's A whole and half its B, o's half A
  // and all of B, and so on.
  const TensorParallel half7 = *TensorParallel::Create(*seven, 1, 2);
  const auto q = cuda::CudaAdapters::ShapeOf(*seven, half7, LoraTarget::kQ);
  const auto down = cuda::CudaAdapters::ShapeOf(*seven, half7, LoraTarget::kDown);
  EXPECT_EQ(q.in, 3072);
  EXPECT_EQ(q.out, 2048);
  EXPECT_EQ(down.in, 12288);
  EXPECT_EQ(down.out, 3072);
  EXPECT_EQ(cuda::CudaAdapters::ScratchBytes(2048), int64_t{16} * 2048 * 64 * 4 + (1 + 4 * 2048) * 4);
}
#endif

}  // namespace
}  // namespace gemma
