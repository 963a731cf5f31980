#include "shard/cuda/cuda_bench_parts.h"

#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "shard/collective/shm_collective.h"
#include "shard/cuda/cuda_backend.h"
#include "shard/cuda/cuda_bench_decode.h"
#include "shard/cuda/cuda_status.h"
#include "shard/cuda/decode_gemm.h"
#include "shard/cuda/device_buffer.h"
#include "shard/cuda/gemm.h"
#include "shard/model/model_weights.h"
#include "shard/model/tensor_parallel.h"

namespace gemma {
namespace {

struct Product {
  const char* name;
  int64_t N, K;
};

// Device ms of `run` (given the weight copy to read), averaged over `reps` runs after two warm-ups.
template <typename Run>
absl::StatusOr<double> TimeMs(int reps, Run&& run) {
  for (int i = 0; i < 2; ++i) {
    if (auto s = run(i); !s.ok()) return s;
  }
  cudaEvent_t start, stop;
  GEMMA_CUDA_RETURN_IF_ERROR(cudaEventCreate(&start));
  GEMMA_CUDA_RETURN_IF_ERROR(cudaEventCreate(&stop));
  GEMMA_CUDA_RETURN_IF_ERROR(cudaEventRecord(start, nullptr));
  for (int i = 0; i < reps; ++i) {
    if (auto s = run(i); !s.ok()) return s;
  }
  GEMMA_CUDA_RETURN_IF_ERROR(cudaEventRecord(stop, nullptr));
  GEMMA_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(stop));
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return static_cast<double>(ms) / reps;
}

}  // namespace

absl::StatusOr<nlohmann::json> DecodeGemmSweep(const ModelConfig& c, double bandwidth) {
  const int64_t H = c.hidden_size, D = c.head_dim;
  const std::vector<Product> products = {{"qkv", (c.num_heads + 2 * c.num_kv_heads) * D, H},
                                         {"o", H, c.num_heads * D},
                                         {"gate_up", 2 * static_cast<int64_t>(c.intermediate_size), H},
                                         {"down", H, c.intermediate_size},
                                         {"logits", c.vocab_size, H}};
  int64_t largest = 0;
  for (const Product& p : products) largest = std::max(largest, p.N * p.K * 2);
  // Copies of the weights rotate through at least 1 GiB, far beyond the L2 cache.
  const int64_t pool_bytes = std::max<int64_t>(largest, int64_t{1} << 30);
  auto pool = cuda::DeviceBuffer::Allocate(static_cast<size_t>(pool_bytes), "the decode GEMM sweep's weights");
  auto a = cuda::DeviceBuffer::Allocate(static_cast<size_t>(cuda::kDecodeMmaMaxRows * std::max(H, int64_t{c.intermediate_size})) * 2,
                                        "the decode GEMM sweep's activations");
  auto out = cuda::DeviceBuffer::Allocate(static_cast<size_t>(cuda::kDecodeMmaMaxRows) * c.vocab_size * 4 +
                                              static_cast<size_t>(cuda::kDecodeMmaMaxRows) * 2 * c.intermediate_size * 4,
                                          "the decode GEMM sweep's output");
  for (const absl::Status& s : {pool.status(), a.status(), out.status()}) {
    if (!s.ok()) return s;
  }
  GEMMA_CUDA_RETURN_IF_ERROR(cudaMemset(pool->get(), 0x3c, pool->bytes()));  // small nonzero bf16 values
  GEMMA_CUDA_RETURN_IF_ERROR(cudaMemset(a->get(), 0x3c, a->bytes()));
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  cuda::GemmOptions def, invariant, lt_only;
  def.multiprocessors = invariant.multiprocessors = sms;
  invariant.mode = cuda::DecodeGemmMode::kBatchInvariant;
  lt_only.mode = cuda::DecodeGemmMode::kCublasLtOnly;
  auto g_def = cuda::Gemm::Create(def);
  auto g_all = cuda::Gemm::Create(invariant);
  auto g_lt = cuda::Gemm::Create(lt_only);
  for (const absl::Status& s : {g_def.status(), g_all.status(), g_lt.status()}) {
    if (!s.ok()) return s;
  }
  // Split sums for any split tried below.
  auto partials = cuda::DeviceBuffer::Allocate(static_cast<size_t>(16) * cuda::kDecodeMmaMaxRows * 49152 * 4, "split sums");
  auto counters = cuda::DeviceBuffer::Allocate(4096 * 4, "split counters");
  if (!partials.ok()) return partials.status();
  if (!counters.ok()) return counters.status();
  GEMMA_CUDA_RETURN_IF_ERROR(cudaMemset(counters->get(), 0, counters->bytes()));
  const cuda::DecodeMmaWorkspace ws{partials->as<float>(), static_cast<int64_t>(partials->bytes() / 4),
                                    counters->as<unsigned>(), 4096};

  nlohmann::json rows = nlohmann::json::array();
  for (const Product& p : products) {
    const int64_t bytes = p.N * p.K * 2;
    const int copies = static_cast<int>(std::max<int64_t>(1, pool_bytes / bytes));
    auto weights_of = [&](int i) { return pool->as<char>() + (i % copies) * bytes; };
    for (int M : {1, 2, 4, 8, 16, 64}) {
      nlohmann::json row = {{"product", p.name}, {"N", p.N}, {"K", p.K}, {"rows", M}};
      auto time_gemm = [&](cuda::Gemm& g) {
        return TimeMs(20, [&](int i) {
          return g.Run(a->get(), weights_of(i), p.K, out->as<float>(), p.N, M, p.N, p.K, cuda::Dtype::kBf16, nullptr);
        });
      };
      for (auto [name, gemm] : {std::pair{"default", g_def->get()}, std::pair{"batch_invariant", g_all->get()},
                                std::pair{"cublaslt", g_lt->get()}}) {
        auto ms = time_gemm(*gemm);
        if (!ms.ok()) return ms.status();
        row[name] = {{"ms", *ms}, {"bandwidth_fraction", bytes / (*ms / 1000) / bandwidth}};
      }
      if (p.N * 64 < 4 * 132 * 64 * 64 && M >= 16) {  // the narrow products: every split the kernel allows
        nlohmann::json splits = nlohmann::json::object();
        for (int split : {1, 2, 4, 8, 16}) {
          if (!cuda::DecodeMmaFits(a->get(), pool->get(), p.K, M, p.N, p.K, split, ws)) continue;
          auto ms = TimeMs(20, [&](int i) -> absl::Status {
            GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchDecodeMmaGemm(a->get(), weights_of(i), p.K, out->as<float>(), p.N, M,
                                                                 static_cast<int>(p.N), static_cast<int>(p.K), split,
                                                                 ws, nullptr));
            return absl::OkStatus();
          });
          if (!ms.ok()) return ms.status();
          splits[std::to_string(split)] = bytes / (*ms / 1000) / bandwidth;
        }
        row["tensor_core_kernel_bandwidth_fraction_by_split"] = splits;
        row["split_chosen"] = cuda::DecodeMmaSplits(p.N, p.K, sms);
      }
      rows.push_back(row);
    }
  }
  return rows;
}

absl::StatusOr<double> TensorParallelTwoDecode(std::shared_ptr<const Checkpoint> checkpoint, const KvCacheOptions& kv,
                                               int batch, int context, int steps) {
  const std::string name = absl::StrCat("gemma-bench-tp2-", ::getpid(), "-", batch);
  absl::StatusOr<DecodeResult> result[2] = {absl::UnknownError("not run"), absl::UnknownError("not run")};
  auto rank_main = [&](int rank) {
    auto c = CreateShmCollective({rank, 2, name, std::chrono::milliseconds(60000)});
    if (!c.ok()) return void(result[rank] = c.status());
    auto tp = TensorParallel::Create(checkpoint->config(), rank, 2);
    if (!tp.ok()) return void(result[rank] = tp.status());
    auto w = ModelWeights::Load(checkpoint, *tp);
    if (!w.ok()) return void(result[rank] = w.status());
    CudaBackendOptions o;
    o.cuda_graphs = false;  // the ranks are threads here (cuda_bench.cc)
    o.limits.max_tokens = std::max(context, batch);
    o.limits.max_sequences = batch;
    auto b = CreateCudaBackend(std::shared_ptr<const ModelWeights>(std::move(*w)), kv, o,
                               std::shared_ptr<HostCollective>(std::move(*c)));
    if (!b.ok()) return void(result[rank] = b.status());
    const int per_seq_blocks = (context + steps + 16) / 16 + 1;
    result[rank] = Decode(**b, batch, context, steps, 0, per_seq_blocks);
  };
  std::thread follower(rank_main, 1);
  rank_main(0);
  follower.join();
  for (const auto& r : result) {
    if (!r.ok()) return r.status();
  }
  return result[0]->tokens_per_s;
}

}  // namespace gemma
