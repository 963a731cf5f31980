// The CPU backend: the Gemma forward pass over bf16 weights with f32 activations, SIMD and OpenMP threads.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "shard/cpu/lora.h"
#include "shard/runtime/backend.h"
#include "shard/collective/collective.h"
#include "shard/cpu/interventions.h"
#include "shard/runtime/kv_cache.h"
#include "shard/model/model_weights.h"
#include "shard/model/quantize.h"

namespace gemma {

// What the CPU's matrix products multiply (--activations): every row of a step, prompt chunks and decode rows
// alike. Each row is rounded (or quantized) on its own and the kernels' sums do not depend on the batch, so a
// sequence's tokens still do not depend on what shares its steps. Where the CPU lacks the instructions (or a matrix
// is in another format) rows run the f32 kernel.
enum class MatMulActivations {
  kF32,   // exact (the default)
  kBf16,  // bf16-rounded activations times bf16 or fp8 weights, AVX512-BF16 dot products (matmul_bf16.h)
  kInt8,  // activations quantized per token times int8 or 4-bit weights (W8A8, W4A8), AVX512-VNNI dot products
          // (matmul_int8.h, matmul_w4a8.h)
};
inline constexpr const char* kMatMulActivationsNames = "f32, bf16, int8";
// The --activations flag's help, one text for every command that takes it.
inline constexpr const char* kMatMulActivationsHelp =
    "f32 (default, exact), bf16 or int8: every weight-matrix product on the CPU, prompt chunks and decode rows alike, "
    "multiplies bf16-rounded activations by AVX512-BF16 dot products (bf16 or fp8 weights), or (with --weights int8 or "
    "int4) activations quantized per token by AVX512-VNNI dot products, where the CPU has them and (bf16) they run "
    "at least 1.25x the f32 rate (f32 elsewhere, said at start)";
// InvalidArgument naming the allowed values for anything else.
absl::StatusOr<MatMulActivations> ParseMatMulActivations(absl::string_view name);
// What the products multiply on this CPU when `requested` is asked for: bf16 and int8 fall back to f32 where the
// dot products are missing, and bf16 also where they run under kBf16DotProductsWorthIt times the f32 rate (measured
// once per process, matmul_bf16.h). `why` (when not null) then says why, for the log. Each process (each rank of a
// group) decides for its own CPU, as it always has for missing instructions.
MatMulActivations ActivationsThatRun(MatMulActivations requested, std::string* why);
// InvalidArgument unless the layers' weights, as loaded (a pre-quantized checkpoint keeps its own format), are
// ones `activations` multiplies: bf16 needs bf16 or fp8 weights, int8 int8 or 4-bit ones (f32 takes any).
absl::Status CheckMatMulActivations(MatMulActivations activations, WeightFormat weights);

// How the CPU computes.
struct CpuComputeOptions {
  MatMulActivations matmul_activations = MatMulActivations::kF32;
};

// Not thread-safe: one step at a time (each step uses all threads itself).
class CpuBackend : public Backend {
 public:
  // `weights` hold this rank's slices; `collective` joins the ranks of a
  // tensor-parallel group (null: a group of one). Every rank must run the same
  // sequence of Forward calls.
  static absl::StatusOr<std::unique_ptr<CpuBackend>> Create(std::shared_ptr<const ModelWeights> weights,
                                                             const KvCacheOptions& kv_options,
                                                             std::shared_ptr<HostCollective> collective = nullptr,
                                                             CpuComputeOptions compute = {});

  const ModelConfig& config() const override { return weights_->config(); }
  int num_kv_blocks() const override { return kv_.num_blocks(); }
  int kv_block_size() const override { return kv_.block_size(); }
  KvWindow kv_window() const override { return kv_.layout().window(); }
  absl::Status Forward(std::span<const SequenceStep> batch, StepLogits* out) override;
  StepTimings last_timings() const override { return timings_; }

 private:
  CpuBackend(std::shared_ptr<const ModelWeights> weights, KvCache kv, std::shared_ptr<HostCollective> collective,
             CpuComputeOptions compute);
  absl::Status AllReduce(float* data, int64_t count);
  // out = in [T, K] x views^T (MatMul), or the bf16 / int8 dot-product kernel --activations names.
  void Project(const float* in, int64_t T, int64_t K, std::span<const MatrixView> views, float* out, int64_t ldo);
  // proj_ = in [T, K] x w^T, summed over ranks (a row-parallel projection: o or down). A rank that does not
  // `contribute` (a replica of query heads another rank adds) puts in zeros.
  // Rows with an adapter add its term for (layer, target) to this rank's part before the sum.
  absl::Status RowParallel(const float* in, int64_t T, int64_t K, const MatrixView& w, StageTimer& timer, int layer,
                           LoraTarget target, bool contribute = true);
  // The step's tokens by adapter, into lora_groups_.
  void GroupByAdapter(std::span<const SequenceStep> batch);
  void Attention(int layer, std::span<const SequenceStep> batch);

  std::shared_ptr<const ModelWeights> weights_;
  std::shared_ptr<HostCollective> collective_;
  KvCache kv_;
  CpuComputeOptions compute_;
  StepTimings timings_;
  // RoPE of global layers [0] and local layers [1] (Gemma 3: other base; never scaled).
  struct Rope {
    std::vector<float> inv_freq;  // [head_dim / 2]
    std::vector<float> cos_sin;   // [T, head_dim / 2, 2], per step
  };
  Rope rope_[2];
  // Per-step scratch, sized to the step's token count T.
  std::vector<float> x_, xn_, qkv_, attn_, proj_, gate_up_, act_;
  // Attention's work (see Attention): items of (token, run of heads sharing a kv head, segments of its keys).
  struct AttentionItem {
    int64_t t;
    int run;
    int first, end;                // the row's keys
    int seg_begin, seg_end;        // its segments this item computes
    int64_t partial;               // -1: the whole row, combined in-thread; else its first slot in partials_
  };
  struct AttentionCombine {
    int64_t t;
    int run, segments;
    int64_t partial;
  };
  std::vector<AttentionItem> attention_items_;
  std::vector<AttentionCombine> attention_combines_;
  std::vector<float> partials_;       // split rows' segments: [max, sum, out] of each head
  std::vector<float> thread_scratch_; // per thread: scores of one segment, then a whole row's segments
  std::vector<float> local_logits_;  // [rows, vocab_slice]: this rank's slice
  std::vector<float> gathered_;      // [world, rows, vocab_slice]
  std::vector<int32_t> tokens_;      // [T]
  std::vector<int32_t> positions_;  // [T]
  std::vector<int> seq_of_token_;   // [T]
  std::vector<LoraGroup> lora_groups_;  // this step's tokens by adapter (empty: no row has one)
  std::vector<float> lora_scratch_;
  StepHooks hooks_;  // the step's interventions and activation reads
};

}  // namespace gemma
