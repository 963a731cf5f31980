// The CUDA backend's class, shared by the files that implement it: cuda_backend_load.cc (weights and KV cache onto
// the device), cuda_backend.cc (a step: metadata, the layers, graphs, logits and sampling) and
// cuda_backend_prompt_runs.cc (attention of long prompt runs through GEMMs). Not part of the backend's interface.
#pragma once

#include <cuda_runtime.h>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "shard/runtime/backend.h"
#include "shard/collective/collective.h"
#include "shard/cuda/cuda_adapters.h"
#include "shard/cuda/cuda_backend.h"
#include "shard/cuda/cuda_interventions.h"
#include "shard/cuda/device_buffer.h"
#include "shard/cuda/gemm.h"
#include "shard/cuda/kernels.h"
#include "shard/cuda/memory_plan.h"
#include "shard/cuda/quantized_kernels.h"
#include "shard/cuda/stage_clock.h"
#include "shard/cuda/tensor_exchange.h"
#include "shard/model/model_weights.h"

namespace gemma::cuda {

// A weight matrix [rows, cols] on the device: dense in the GEMM input type, or quantized (codes with their scales,
// quantized_kernels.h) where the checkpoint or --weights made it so.
struct DeviceWeight {
  DeviceBuffer owned, codes, scales, zeros;
  const void* dense = nullptr;  // the dense rows: `owned`'s, or a buffer held elsewhere (the bf16 embedding)
  QuantMatrix q;                // q.codes set: quantized
  int64_t rows = 0, cols = 0;
  bool quantized() const { return q.codes != nullptr; }
  int64_t bytes() const {
    return static_cast<int64_t>(owned.bytes() + codes.bytes() + scales.bytes() + zeros.bytes());
  }
};

struct DeviceLayer {
  DeviceWeight qkv, o, gate_up, down;  // qkv = [q; k; v] rows, gate_up = [gate; up] rows
  DeviceBuffer attn_norm, ffn_norm;     // f32, 1 + w
  // Gemma 2/3's norms of the attention and MLP outputs, and Gemma 3's QK-norm (f32, 1 + w); empty where the model
  // has none.
  DeviceBuffer post_attn_norm, post_ffn_norm, q_norm, k_norm;
};

// One step's metadata, laid out alike on the host (pinned) and on the device, so that one copy moves it: int64
// cache_row[T], then int32 tokens, positions, seq_of_token, logit rows, lone tokens, tile firsts and tile counts (T
// each, at most), then the block tables [sequences][max_blocks].
// With KV windows a step has a block table and cache rows per kind of layer (`kinds`: the global layers, then each
// group of local layers, KvLayout); without, one of each for every layer.
struct StepMeta {
  int64_t* cache_row;  // [kinds][T]
  int32_t *tokens, *positions, *seq_of_token, *rows, *single, *tile_first, *tile_count;
  int32_t* tables;     // [kinds][sequences][max_blocks]
  static size_t Bytes(int64_t T, int64_t sequences, int max_blocks, int kinds) {
    return static_cast<size_t>(T) * (8 * kinds + 7 * 4) + static_cast<size_t>(sequences * max_blocks) * 4 * kinds;
  }
  static StepMeta In(void* base, int64_t T, int kinds) {
    StepMeta m;
    m.cache_row = static_cast<int64_t*>(base);  // 8-byte aligned first
    m.tokens = reinterpret_cast<int32_t*>(m.cache_row + T * kinds);
    m.positions = m.tokens + T;
    m.seq_of_token = m.positions + T;
    m.rows = m.seq_of_token + T;
    m.single = m.rows + T;
    m.tile_first = m.single + T;
    m.tile_count = m.tile_first + T;
    m.tables = m.tile_count + T;
    return m;
  }
};

// A run of 32 or more prompt tokens of one sequence, whose attention goes through GEMMs (prompt_attention.h):
// step rows [first, first + tokens), positions from start_pos, the step's sequence index.
struct PromptRun {
  int first, tokens, start_pos, sequence;
};

// A device buffer sized at start for the largest step (steps reuse it); once `fixed`, a step that would need more
// is an error rather than an allocation.
struct Scratch {
  DeviceBuffer buffer;
  bool fixed = false;
  absl::StatusOr<void*> At(size_t bytes, const char* what) {
    if (buffer.bytes() < bytes) {
      if (fixed) {
        return absl::InternalError(absl::StrCat(what, ": the step needs ", bytes, " bytes, beyond the ", buffer.bytes(),
                                                " planned at start for the largest step"));
      }
      buffer = DeviceBuffer();
      auto b = DeviceBuffer::Allocate(bytes, what);
      if (!b.ok()) return b.status();
      buffer = std::move(*b);
    }
    return buffer.get();
  }
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(std::shared_ptr<const ModelWeights> weights, std::unique_ptr<TensorExchange> exchange,
              CudaBackendOptions options)
      : weights_(std::move(weights)), exchange_(std::move(exchange)), options_(options),
        act_(options.precision == CudaPrecision::kF32 ? Dtype::kF32 : Dtype::kBf16),
        graphs_enabled_(options.cuda_graphs) {}
  ~CudaBackend() override {
    for (auto& [batch, g] : graphs_) cudaGraphExecDestroy(g);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    if (host_meta_ != nullptr) cudaFreeHost(host_meta_);
  }

  absl::Status Init(const KvCacheOptions& kv_options);
  const CudaMemoryReport& memory_report() const { return memory_; }
  int graphs_captured() const { return static_cast<int>(graphs_.size()); }
  // Decode batches up to this size are replayed from graphs (the planned memory keeps room for that many).
  static constexpr int kMaxGraphBatch = 256;
  // One draw's room in the sampling buffer: its parameters, token, log-prob and top log-probs.
  static constexpr size_t kDrawBytes = sizeof(cuda::RowSampling) + 8 + cuda::kMaxTopLogprobs * 8;
  // Draws with penalties go this many at a time, each through a penalized copy of its logits row.
  static constexpr int kPenalizedDrawsPerTurn = 8;
  // The penalties buffer: a turn's PenaltyRow entries, then per draw at most a history's worth of distinct tokens
  // and their generated counts.
  static int64_t PenaltyBytes(int max_context) {
    return kPenalizedDrawsPerTurn * static_cast<int64_t>(sizeof(cuda::PenaltyRow) + 8 * (static_cast<int64_t>(max_context) + 1));
  }

  const ModelConfig& config() const override { return weights_->config(); }
  int num_kv_blocks() const override { return num_blocks_; }
  int kv_block_size() const override { return block_size_; }
  KvWindow kv_window() const override { return kv_layout_.window(); }
  // As CudaAdapters refuses steps: no adapter without slots, none above the slots' rank, no more than the slots.
  LoraCapacity lora_capacity() const override {
    return {options_.lora_slots > 0 ? options_.lora_max_rank : 0, options_.lora_slots};
  }
  absl::Status Forward(std::span<const SequenceStep> batch, StepLogits* out) override {
    std::vector<SampledToken> none;
    return ForwardAndSample(batch, {}, true, out, &none);
  }
  // Draws on the device from the logits there; copies logits to the host only when asked.
  absl::Status ForwardAndSample(std::span<const SequenceStep> batch, std::span<const RowSample> samples,
                                bool logits_to_host, StepLogits* out, std::vector<SampledToken>* tokens) override;
  StepTimings last_timings() const override { return last_clocked_ ? device_timings_ : host_timings_; }

 private:
  // Copies `m` (rows possibly strided, any format) into rows [row_offset, row_offset + m.rows) of `dst`, in the
  // GEMM input type (a quantized or f32 matrix dequantized on the host).
  absl::Status Upload(const MatrixView& m, const DeviceBuffer& dst, int64_t row_offset);
  // The parts stacked by rows: quantized as they are where all share one quantized format (and int4 group), else
  // dense in the GEMM input type.
  absl::StatusOr<DeviceWeight> UploadWeight(std::initializer_list<const MatrixView*> parts, const std::string& what);
  absl::StatusOr<DeviceWeight> UploadQuantized(std::initializer_list<const MatrixView*> parts, const std::string& what);
  // c = in W^T for T rows of `in` (the GEMM input type, rows w.cols apart) into c (f32, rows ldc apart): cuBLASLt
  // over a dense matrix; a quantized one through the streaming kernel in chunks of its rows while that reads fewer
  // bytes than dequantizing would (StreamedRowsMax), else dequantized into dequant_ slice by slice, each slice
  // through cuBLASLt.
  absl::Status Project(const void* in, int64_t T, const DeviceWeight& w, float* c, int64_t ldc);
  // Reserves dequant_ for the largest quantized matrix (a slice of it beyond options_.dequant_scratch_bytes).
  absl::Status ReserveDequantScratch();
  // FailedPrecondition where the weights hold fp8 and the device is older than compute capability 8.9.
  absl::Status CheckQuantizedFormats() const;
  absl::StatusOr<DeviceBuffer> UploadFloats(const std::vector<float>& v, const std::string& what);
  // Enqueued only (no wait) while enqueue_collectives_ is set: the decode steps that graphs capture.
  absl::Status AllReduce(float* data, int64_t count);
  // Every buffer a step can use, at the size the largest step (limits_) needs; then none grows.
  absl::Status ReserveStepBuffers();
  // Runs the largest prompt step and the largest decode step over a temporary cache, then sizes the real one
  // (memory_plan.h) and allocates it.
  absl::Status ProfileAndAllocateKv(const KvCacheOptions& kv_options);
  absl::Status AllocateKv(int64_t blocks, const std::string& what);
  // Every rank's `mine` (integers under 2^24), rank after rank: start-up agreement within the group.
  absl::StatusOr<std::vector<float>> GatherIntegers(const std::vector<float>& mine);
  int BlocksUsed(const SequenceStep& s) const;
  // Replays the graph captured for this key (batch size and LoRA targets, GraphKey), capturing it first. A capture
  // that fails turns graphs off for this backend (said once on stderr) and the step runs as is.
  absl::Status RunAsGraph(int64_t key, const std::function<absl::Status()>& enqueue);
  // A decode graph's key: its batch size, and which projections its LoRA kernels run for (none without adapters).
  static int64_t GraphKey(int batch, uint32_t lora_targets) { return batch | (static_cast<int64_t>(lora_targets) << 32); }
  // out = in W^T, plus the LoRA terms of (layer, target) for the step's adapter rows (lora_chunks: the LoRA grids'
  // chunk capacity, CudaAdapters::Add), then summed over the ranks: each rank adds its slice's part before the sum,
  // as for the base matrix.
  absl::Status RowParallel(const void* in, int64_t T, const DeviceWeight& w, float* out, int layer, LoraTarget target,
                           int lora_chunks);
  // Buffers of a step's prompt runs.
  struct PromptScratch {
    void* qkv = nullptr;     // the runs' q, k and v rows in the GEMM input type (the f32 qkv itself in f32 mode)
    char* kv = nullptr;      // a continued run's cached K and V, gathered
    void* scores = nullptr;  // scores and probabilities of one query chunk
  };
  absl::StatusOr<PromptScratch> PromptScratchFor(std::span<const PromptRun> runs, int64_t T, float* qkv);
  // One layer's attention for the prompt runs, after its cache write; tables: the step's block tables on the device.
  absl::Status AttendPromptRuns(int layer, std::span<const PromptRun> runs, const PromptScratch& scratch,
                                const float* qkv, const char* k_base, const char* v_base, const int32_t* tables,
                                int max_blocks, void* attn);
  // Block tables (and cache rows) of a step: one per kind of layer; a layer's kind (0: global, 1 + its local group).
  int TableKinds() const { return 1 + kv_layout_.window().local_groups; }
  int TableKind(int layer) const { return kv_layout_.LocalGroup(layer) + 1; }
  // The keys a layer's queries see (0: all earlier ones): the model's sliding window on its local layers.
  int WindowOf(int layer) const { return config().IsLocal(layer) ? config().sliding_window : 0; }
  // The RoPE table of a layer: Gemma 3's local layers rotate with their own base, its global ones scaled.
  const float* CosSinOf(int layer) const {
    return config().IsLocal(layer) && cos_sin_local_.get() != nullptr ? cos_sin_local_.as<float>() : cos_sin_.as<float>();
  }
  // Draws `samples` from the step's R logits rows (vocabulary order, on the device).
  absl::Status SampleOnDevice(const float* logits, int64_t R, std::span<const RowSample> samples,
                              std::vector<SampledToken>* sampled);

  std::shared_ptr<const ModelWeights> weights_;
  std::unique_ptr<TensorExchange> exchange_;
  CudaBackendOptions options_;
  Dtype act_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::Gemm> gemm_;
  std::vector<DeviceLayer> layers_;
  DeviceBuffer embed_bf16_;   // this rank's vocabulary rows of a bf16 embedding: looked up by Embed
  // The output projection (the tied embedding): quantized as stored, else dense in the GEMM input type (bf16 mode
  // reads embed_bf16_). A quantized or f32 embedding is also looked up through it.
  DeviceWeight head_;
  DeviceBuffer dequant_;      // quantized matrices dequantized for products of many rows (PrepareQuantized)
  DeviceBuffer final_norm_;   // f32
  DeviceBuffer cos_sin_;        // [max positions][head_dim / 2][2], of the global layers
  DeviceBuffer cos_sin_local_;  // the same for local layers, where their rotation differs; else empty
  DeviceBuffer kv_;           // [blocks][kv_layout_.group_layers()][2][kv heads][block][head_dim]
  KvLayout kv_layout_;        // which layers a block holds (KvCacheOptions::windowed)
  int block_size_ = 16, num_blocks_ = 0;
  StepLimits limits_;  // resolved against the model
  CudaMemoryReport memory_;
  bool enqueue_collectives_ = false;
  int64_t block_stride_ = 0, head_stride_ = 0, layer_stride_ = 0;
  Scratch x_, xn_, qkv_, attn_, proj_, gate_up_, act_buf_, logits_, gathered_, placed_, meta_, sampling_, token_masks_,
      partials_, prompt_qkv_, prompt_scores_, prompt_kv_,
      penalized_,  // kPenalizedDrawsPerTurn penalized logits rows
      penalties_;  // their PenaltyRow entries, then each row's distinct tokens and generated counts
  int multiprocessors_ = 1;
  void* host_meta_ = nullptr;
  size_t host_meta_bytes_ = 0;
  bool graphs_enabled_;
  std::map<int64_t, cudaGraphExec_t> graphs_;  // by GraphKey
  std::set<int64_t> warmed_;  // keys run once: a graph is captured from the second step of a key
  std::unique_ptr<CudaAdapters> adapters_;  // LoRA slots (ReserveStepBuffers)
  CudaStepHooks hooks_;                     // the step's interventions and activation reads
  StepTimings host_timings_, device_timings_;
  bool last_clocked_ = false;  // the last step's timings are device_timings_
  cuda::StageClock clock_;
};

}  // namespace gemma::cuda
