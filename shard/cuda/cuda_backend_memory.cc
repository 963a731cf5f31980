// Device memory planned at start: every step buffer at the size of the largest step, one such step run over a
// temporary cache, then the KV cache sized from what is left (memory_plan.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "shard/cuda/cuda_backend_impl.h"
#include "shard/cuda/cuda_status.h"
#include "shard/cuda/prompt_attention.h"

namespace gemma::cuda {
namespace {

class CudaDeviceMemory : public DeviceMemory {
 public:
  absl::StatusOr<DeviceMemoryReading> Read() override {
    size_t free_bytes = 0, total = 0;
    GEMMA_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total));
    return DeviceMemoryReading{static_cast<int64_t>(free_bytes), static_cast<int64_t>(total)};
  }
};

// Graphs captured later, one per decode batch size (and per set of LoRA targets, with adapter slots: the room of
// one more set per size), take a little device memory each.
int64_t GraphReserveBytes(bool graphs, int max_sequences, bool lora) {
  return graphs ? (int64_t{64} << 20) + (lora ? 2 : 1) *
                      static_cast<int64_t>(std::min(max_sequences, CudaBackend::kMaxGraphBatch)) * (int64_t{1} << 20)
                : 0;
}

std::string LimitsText(const StepLimits& l) {
  return absl::StrCat(l.max_tokens, " tokens, ", l.max_sequences, " sequences, ", l.max_context, " positions");
}

}  // namespace

absl::Status CudaBackend::ReserveStepBuffers() {
  const ModelConfig& c = config();
  const TensorParallel& tp = weights_->tp();
  const int64_t H = c.hidden_size, D = c.head_dim, I = tp.ffn_size, ab = DtypeBytes(act_);
  const int64_t q_dim = tp.num_q_heads * D, kv_dim = tp.num_kv_heads * D, qkv_ld = q_dim + 2 * kv_dim;
  // A step has a token per sequence at least; every token may want its logits row (scoring).
  const int64_t T = limits_.max_tokens, R = T, B = std::min<int64_t>(limits_.max_sequences, T);
  const int max_blocks = (limits_.max_context + block_size_ - 1) / block_size_;
  const size_t meta_bytes = StepMeta::Bytes(T, B, max_blocks, TableKinds());
  GEMMA_CUDA_RETURN_IF_ERROR(cudaMallocHost(&host_meta_, meta_bytes));
  host_meta_bytes_ = meta_bytes;
  struct Want {
    Scratch* scratch;
    int64_t bytes;
    const char* what;
  };
  // The sizes ForwardAndSample, PromptScratchFor and SampleOnDevice ask for, at their largest.
  std::vector<Want> wants = {
      {&meta_, static_cast<int64_t>(meta_bytes), "step metadata"},
      {&x_, T * H * 4, "activations"},
      {&xn_, T * H * ab, "activations"},
      {&qkv_, T * qkv_ld * 4, "activations"},
      {&attn_, T * q_dim * ab, "activations"},
      {&proj_, T * H * 4, "activations"},
      {&gate_up_, T * 2 * I * 4, "activations"},
      {&act_buf_, T * I * ab, "activations"},
      {&logits_, R * tp.vocab_slice * 4, "logits"},
      // Flash-decoding's splits make at most 2 * multiprocessors blocks beyond one per (token, head).
      {&partials_, (B * tp.num_q_heads + 2 * multiprocessors_) * (D + 2) * 4, "attention partials"},
      {&prompt_scores_,
       static_cast<int64_t>(PromptAttentionMaxScratchBytes(limits_.max_context, static_cast<int>(T), tp.num_q_heads, act_)),
       "prompt attention scores"},
      {&prompt_kv_, static_cast<int64_t>(limits_.max_context) * 2 * kv_dim * ab, "prompt attention keys and values"},
      {&sampling_, R * static_cast<int64_t>(kDrawBytes), "sampling"},
      {&penalized_, kPenalizedDrawsPerTurn * static_cast<int64_t>(c.vocab_size) * 4, "penalized logits"},
      {&penalties_, PenaltyBytes(limits_.max_context), "penalties"},
      // Masks only for the draws of one turn of SampleOnDevice, which takes at most B masked rows at a time.
      {&token_masks_, B * ((static_cast<int64_t>(c.vocab_size) + 31) / 32) * 4, "structured output masks"},
  };
  if (act_ == Dtype::kBf16) wants.push_back({&prompt_qkv_, T * qkv_ld * 2, "prompt attention inputs"});
  if (tp.world > 1) {
    wants.push_back({&gathered_, tp.world * R * tp.vocab_slice * 4, "gathered logits"});
    wants.push_back({&placed_, R * c.vocab_size * 4, "logits"});
  }
  int64_t total = 0;
  for (const Want& w : wants) {
    auto p = w.scratch->At(static_cast<size_t>(std::max<int64_t>(w.bytes, 1)), w.what);
    if (!p.ok()) {
      return absl::ResourceExhaustedError(absl::StrCat(p.status().message(), " (buffers for the largest step: ",
                                                       LimitsText(limits_), "; allowed: smaller --max_tokens_per_step, "
                                                       "--max_batch_size or --max_model_len)"));
    }
    w.scratch->fixed = true;
    total += static_cast<int64_t>(w.scratch->buffer.bytes());
  }
  memory_.step_buffers = total + static_cast<int64_t>(dequant_.bytes());  // dequant_: reserved with the weights
  // LoRA slots and scratch, and the steering vector: planned here, before the cache takes what is left.
  auto adapters = CudaAdapters::Create(c, tp, options_.lora_slots, options_.lora_max_rank, static_cast<int>(T), stream_);
  if (!adapters.ok()) return adapters.status();
  adapters_ = std::move(*adapters);
  if (auto s = hooks_.Reserve(H); !s.ok()) return s;
  memory_.adapters = adapters_->reserved_bytes() + hooks_.reserved_bytes();
  return exchange_->Reserve(static_cast<size_t>(std::max(T * H, (1 + tp.world) * R * tp.vocab_slice)));
}

absl::Status CudaBackend::AllocateKv(int64_t blocks, const std::string& what) {
  const int64_t block_bytes = block_stride_ * DtypeBytes(act_);
  kv_ = DeviceBuffer();
  auto kv = DeviceBuffer::Allocate(static_cast<size_t>(blocks * block_bytes), what);
  if (!kv.ok()) return kv.status();
  kv_ = std::move(*kv);
  // Finite from the start: the GEMM prompt path multiplies masked keys' values by 0, and with KV windows a local
  // table names a held block where the window has passed, whose unwritten slots it may read.
  GEMMA_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(kv_.get(), 0, kv_.bytes(), stream_));
  num_blocks_ = static_cast<int>(blocks);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> CudaBackend::GatherIntegers(const std::vector<float>& mine) {
  // Small integers (under 2^24) are exact in floats, which the exchange moves.
  const size_t n = mine.size(), world = static_cast<size_t>(exchange_->world());
  auto buffer = DeviceBuffer::Allocate((n + n * world) * sizeof(float), "a start-up exchange between ranks");
  if (!buffer.ok()) return buffer.status();
  GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(buffer->get(), mine.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream_));
  if (auto s = exchange_->AllGather(buffer->as<float>(), n, buffer->as<float>() + n, stream_); !s.ok()) return s;
  std::vector<float> all(n * world);
  GEMMA_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(all.data(), buffer->as<float>() + n, all.size() * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return all;
}

absl::Status CudaBackend::ProfileAndAllocateKv(const KvCacheOptions& kv_options) {
  const ModelConfig& c = config();
  const TensorParallel& tp = weights_->tp();
  const int64_t block_bytes = block_stride_ * DtypeBytes(act_);
  const int context_blocks = (limits_.max_context + block_size_ - 1) / block_size_;
  if (tp.world > 1) {
    // The profile steps below are collective: ranks started with other limits would run different steps.
    auto all = GatherIntegers({static_cast<float>(limits_.max_tokens), static_cast<float>(limits_.max_sequences),
                               static_cast<float>(limits_.max_context)});
    if (!all.ok()) return all.status();
    for (int r = 0; r < tp.world; ++r) {
      const float* f = all->data() + static_cast<size_t>(3) * r;
      if (f[0] != limits_.max_tokens || f[1] != limits_.max_sequences || f[2] != limits_.max_context) {
        return absl::InvalidArgumentError(absl::StrCat(
            "rank ", r, " was started with other step limits (", f[0], " tokens, ", f[1], " sequences, ", f[2],
            " positions) than rank ", tp.rank, " (", LimitsText(limits_), "); every rank must take the same"));
      }
    }
  }
  // With KV windows, a sequence holds global blocks for every position and local ones for at most its window, a
  // chunk and a block (what the router's block manager admits by).
  const KvWindow window = kv_layout_.window();
  const int local_groups = window.local_groups;
  const int64_t local_indices = window.MostLocalIndices(limits_.max_context, limits_.max_tokens, block_size_);
  const int64_t sequence_blocks = context_blocks + local_groups * local_indices;
  if (auto s = AllocateKv(sequence_blocks,
                          "a KV cache for one sequence of the longest context (measuring the largest step)");
      !s.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat(s.message(), "; allowed: a smaller --max_model_len"));
  }
  // The largest prompt step (the longest chunk, ending at the longest context, every row's logits), then the largest
  // decode batch sampled on the device: every kernel and library path a step takes is loaded and run once. Without
  // graphs: nothing is worth capturing yet, and ranks that are threads of one process (tests) must not run
  // host-collective graph steps (DESIGN.md).
  const bool graphs = graphs_enabled_;
  graphs_enabled_ = false;
  absl::Cleanup restore_graphs = [this, graphs] { graphs_enabled_ = graphs; };
  // The global table, then the local groups' blocks of the block indices the prompt step's window reaches.
  std::vector<int32_t> table(static_cast<size_t>(sequence_blocks));
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i);
  const std::span<const int32_t> global(table.data(), context_blocks), local(table.data() + context_blocks,
                                                                                 table.size() - context_blocks);
  const int prompt = std::min(limits_.max_tokens, limits_.max_context);
  const int start = limits_.max_context - prompt;
  const int32_t local_begin = window.enabled() ? std::max(0, start - window.window + 1) / block_size_ : 0;
  std::vector<int32_t> ids(prompt, c.bos_id);
  SequenceStep chunk{ids, start, global, LogitsWanted::kAll,
                     local.first(static_cast<size_t>(context_blocks - local_begin) * local_groups), local_begin};
  StepLogits logits;
  std::vector<SampledToken> sampled;
  if (auto s = ForwardAndSample({&chunk, 1}, {}, false, &logits, &sampled); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("the largest prompt step failed at start: ", s.message()));
  }
  const int batch = std::min(limits_.max_sequences, limits_.max_tokens);
  std::vector<SequenceStep> decode(batch, SequenceStep{std::span<const int32_t>(ids.data(), 1), 0, global.first(1),
                                                       LogitsWanted::kLast, local.first(local_groups)});
  std::vector<RowSample> samples(batch);
  for (int i = 0; i < batch; ++i) samples[i].row = i;
  if (auto s = ForwardAndSample(decode, samples, false, &logits, &sampled); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("the largest decode step failed at start: ", s.message()));
  }
  std::move(restore_graphs).Invoke();
  kv_ = DeviceBuffer();  // the measure below leaves out the temporary cache
  GEMMA_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());

  KvPlanRequest request;
  request.fraction = kv_options.memory_fraction;
  request.fixed_blocks = kv_options.num_blocks > 0 ? kv_options.num_blocks : kv_options.max_bytes / block_bytes;
  request.block_bytes = block_bytes;
  request.min_blocks = sequence_blocks;
  request.reserve_bytes = GraphReserveBytes(graphs_enabled_, limits_.max_sequences, options_.lora_slots > 0);
  request.limits = LimitsText(limits_);
  CudaDeviceMemory device;
  auto plan = PlanKvCache(device, request);
  int64_t blocks = plan.ok() ? std::min<int64_t>(plan->blocks, INT32_MAX) : 0;
  if (tp.world > 1) {
    // One block id space for the group: every rank takes the smallest plan, and learns when another failed
    // instead of waiting on it until the collective times out. Counts travel as two exact 16-bit halves.
    auto all = GatherIntegers({static_cast<float>(blocks >> 16), static_cast<float>(blocks & 0xffff),
                               plan.ok() ? 0.0f : 1.0f});
    if (!all.ok()) return all.status();
    for (int r = 0; r < tp.world; ++r) {
      const float* f = all->data() + static_cast<size_t>(3) * r;
      if (f[2] != 0 && plan.ok()) {
        return absl::FailedPreconditionError(
            absl::StrCat("rank ", r, " of the group could not plan its KV cache (its log says why)"));
      }
      blocks = std::min(blocks, (static_cast<int64_t>(f[0]) << 16) + static_cast<int64_t>(f[1]));
    }
  }
  if (!plan.ok()) return plan.status();
  if (auto s = AllocateKv(blocks, absl::StrCat("the KV cache (", blocks, " blocks of ", block_size_, " positions)"));
      !s.ok()) {
    return s;
  }
  memory_.total = plan->total_bytes;
  memory_.used_before_kv = plan->used_bytes;
  memory_.kv = blocks * block_bytes;
  memory_.kv_blocks = static_cast<int>(blocks);
  memory_.fraction = kv_options.memory_fraction;
  memory_.limits = limits_;
  std::fprintf(stderr,
               "gemma CUDA backend: rank %d device memory %s: weights %s, buffers for the largest step (%s) %s, "
               "LoRA adapters (%d slots of rank %d) %s, in use before the KV cache %s; KV cache %s = %lld blocks of %d "
               "positions (%s)\n",
               tp.rank, HumanBytes(memory_.total).c_str(), HumanBytes(memory_.weights).c_str(),
               LimitsText(limits_).c_str(), HumanBytes(memory_.step_buffers).c_str(), options_.lora_slots,
               options_.lora_max_rank, HumanBytes(memory_.adapters).c_str(),
               HumanBytes(memory_.used_before_kv).c_str(), HumanBytes(memory_.kv).c_str(),
               static_cast<long long>(blocks), block_size_,
               kv_options.memory_fraction > 0 ? absl::StrCat("--gpu_memory_fraction ", kv_options.memory_fraction).c_str()
                                              : "a fixed size");
  return absl::OkStatus();
}

}  // namespace gemma::cuda

namespace gemma {

absl::StatusOr<CudaMemoryReport> CudaMemoryReportOf(const Backend& backend) {
  const auto* cuda = dynamic_cast<const cuda::CudaBackend*>(&backend);
  if (cuda == nullptr) return absl::NotFoundError("not a CUDA backend");
  return cuda->memory_report();
}

int CudaGraphsCaptured(const Backend& backend) {
  const auto* cuda = dynamic_cast<const cuda::CudaBackend*>(&backend);
  return cuda == nullptr ? 0 : cuda->graphs_captured();
}

}  // namespace gemma
