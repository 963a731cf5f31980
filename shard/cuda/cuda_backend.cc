#include "shard/cuda/cuda_backend.h"
#include "shard/cuda/cuda_model_support.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "absl/strings/str_cat.h"
#include "shard/cuda/cuda_backend_impl.h"
#include "shard/cuda/cuda_status.h"
#include "shard/cuda/programmatic_launch.h"
#include "shard/cuda/prompt_attention.h"

namespace gemma {
namespace cuda {

// Only the blocks a step reaches go into its metadata: a longer table (allowed) must not outgrow the buffer
// planned for the longest context, nor change a graph's table stride.
int CudaBackend::BlocksUsed(const SequenceStep& s) const {
  const int64_t end = static_cast<int64_t>(s.start_pos) + static_cast<int64_t>(s.tokens.size());
  return static_cast<int>(std::min<int64_t>(static_cast<int64_t>(s.block_table.size()), (end + block_size_ - 1) / block_size_));
}

absl::Status CudaBackend::RunAsGraph(int64_t key, const std::function<absl::Status()>& enqueue) {
  auto it = graphs_.find(key);
  if (it == graphs_.end() && warmed_.insert(key).second) {
    // The first step of a batch size runs as is: GEMM plans and buffers are made outside any capture.
    return enqueue();
  }
  if (it == graphs_.end()) {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    absl::Status captured = cuda::CudaError(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal),
                                            "cudaStreamBeginCapture", __FILE__, __LINE__);
    if (captured.ok()) {
      captured = enqueue();
      const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
      if (captured.ok()) captured = cuda::CudaError(end, "cudaStreamEndCapture", __FILE__, __LINE__);
    }
    if (captured.ok()) {
      captured = cuda::CudaError(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate", __FILE__, __LINE__);
    }
    if (graph != nullptr) cudaGraphDestroy(graph);
    if (!captured.ok()) {
      cudaGetLastError();
      graphs_enabled_ = false;
      std::fprintf(stderr, "gemma CUDA backend: decode steps run without CUDA graphs: %s\n",
                   std::string(captured.message()).c_str());
      return enqueue();
    }
    it = graphs_.emplace(key, exec).first;
  }
  GEMMA_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(it->second, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::AllReduce(float* data, int64_t count) {
  if (exchange_->world() == 1) return absl::OkStatus();
  if (enqueue_collectives_) return exchange_->EnqueueAllReduceSum(data, static_cast<size_t>(count), stream_);
  return exchange_->AllReduceSum(data, static_cast<size_t>(count), stream_);
}

namespace {

// Rows up to which chunks of kQuantizedGemmMaxRows through the streaming kernel (the codes read once a chunk) read
// fewer bytes than dequantizing (codes read once, the dequantized matrix written and read back in bf16).
int64_t StreamedRowsMax(cuda::QuantFormat f) {
  return f == cuda::QuantFormat::kInt4 ? 8 * cuda::kQuantizedGemmMaxRows : 4 * cuda::kQuantizedGemmMaxRows;
}

}  // namespace

absl::Status CudaBackend::Project(const void* in, int64_t T, const DeviceWeight& w, float* c, int64_t ldc) {
  if (T == 0 || w.rows == 0) return absl::OkStatus();
  if (!w.quantized()) return gemm_->Run(in, w.dense, w.cols, c, ldc, T, w.rows, w.cols, act_, stream_);
  const int64_t ab = cuda::DtypeBytes(act_);
  if (cuda::QuantizedGemmTakes(w.q, 1) && T <= StreamedRowsMax(w.q.format)) {
    for (int64_t r0 = 0; r0 < T; r0 += cuda::kQuantizedGemmMaxRows) {
      const int rows = static_cast<int>(std::min<int64_t>(cuda::kQuantizedGemmMaxRows, T - r0));
      GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchQuantizedGemm(w.q, static_cast<const char*>(in) + r0 * w.cols * ab, act_,
                                                           rows, c + r0 * ldc, ldc, stream_));
    }
    return absl::OkStatus();
  }
  const int64_t slice = std::min<int64_t>(w.rows, static_cast<int64_t>(dequant_.bytes()) / (w.cols * ab));
  if (slice < 1) {
    return absl::InternalError(absl::StrCat("the dequantization scratch (", dequant_.bytes(),
                                            " bytes) holds no row of a quantized matrix of ", w.cols, " columns"));
  }
  for (int64_t r = 0; r < w.rows; r += slice) {
    const int64_t n = std::min(slice, w.rows - r);
    GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchDequantize(w.q, r, n, act_, dequant_.get(), stream_));
    if (auto s = gemm_->Run(in, dequant_.get(), w.cols, c + r, ldc, T, n, w.cols, act_, stream_); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::RowParallel(const void* in, int64_t T, const DeviceWeight& w, float* out, int layer,
                                      LoraTarget target, int lora_chunks) {
  const int64_t H = config().hidden_size;
  if (auto s = Project(in, T, w, out, H); !s.ok()) return s;
  if (auto s = adapters_->Add(layer, target, in, w.cols, act_, out, H, lora_chunks, stream_); !s.ok()) return s;
  return AllReduce(out, T * H);
}

absl::Status CudaBackend::ForwardAndSample(std::span<const SequenceStep> batch, std::span<const RowSample> samples,
                                          bool logits_to_host, StepLogits* out, std::vector<SampledToken>* sampled) {
  const ModelConfig& c = config();
  host_timings_ = {};
  device_timings_ = {};
  last_clocked_ = false;
  StageTimer timer(&host_timings_.other_seconds);
  if (auto s = ValidateStep(batch, c, num_blocks_, block_size_, kv_layout_.window()); !s.ok()) return s;
  if (auto s = CheckStepLimits(batch, limits_); !s.ok()) return s;
  GEMMA_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  const TensorParallel& tp = weights_->tp();
  // The step's adapters onto the device (an upload waits here, before any of the step's work), and its rows that
  // intervene or read.
  if (auto s = adapters_->Prepare(batch, stream_); !s.ok()) return s;
  hooks_.Reset(batch, c.num_layers, tp.rank == 0);
  const int64_t H = c.hidden_size, D = c.head_dim, I = tp.ffn_size;
  const int64_t q_dim = tp.num_q_heads * D, kv_dim = tp.num_kv_heads * D, qkv_ld = q_dim + 2 * kv_dim;
  const int64_t ab = cuda::DtypeBytes(act_);

  // Host metadata, laid out in one pinned buffer and copied in one transfer.
  int64_t T = 0;
  int max_blocks = 1;
  for (const auto& s : batch) {
    T += static_cast<int64_t>(s.tokens.size());
    max_blocks = std::max(max_blocks, BlocksUsed(s));
  }
  const int64_t B = static_cast<int64_t>(batch.size());
  // A decode step (one token and its logits per sequence) replays a CUDA graph captured for its batch size: the
  // launches of a step cost more host time than the GPU takes for them at small batches. With several ranks the
  // graph holds the all-reduces too (enqueued on the step's stream, waited for once at its end). Block tables are
  // padded to the longest context so that every step of a batch size has the same layout.
  // Interventions and reads launch per row and copy to the host: such steps run as they are. LoRA steps replay a
  // graph of their own (the layout of adapter rows is read on the device).
  bool graph_step = graphs_enabled_ && T == B && B <= kMaxGraphBatch && !hooks_.active();
  for (const auto& s : batch) graph_step = graph_step && s.logits == LogitsWanted::kLast;
  const int lora_chunks = graph_step ? static_cast<int>(T) : adapters_->num_chunks();
  if (graph_step) max_blocks = std::max(max_blocks, (limits_.max_context + block_size_ - 1) / block_size_);
  last_clocked_ = options_.stage_timing && !graph_step;
  auto stage = [&](double StepTimings::*field) {
    timer.Switch(&(host_timings_.*field));
    if (last_clocked_) clock_.Mark(&(device_timings_.*field), stream_);
  };
  out->row_begin.clear();
  out->activations.clear();
  const int kinds = TableKinds();
  const size_t meta_bytes = StepMeta::Bytes(T, B, max_blocks, kinds);
  if (host_meta_bytes_ < meta_bytes) {
    return absl::InternalError(absl::StrCat("step metadata of ", meta_bytes, " bytes exceeds the ", host_meta_bytes_,
                                            " planned at start for the largest step"));
  }
  const StepMeta host = StepMeta::In(host_meta_, T, kinds);
  // Sequence i's block table for a kind of layer (0: the global layers, or every layer without KV windows).
  auto table_of = [&](const StepMeta& m, int kind, int64_t i) { return m.tables + (kind * B + i) * max_blocks; };
  int num_single = 0, num_tiles = 0;
  std::vector<PromptRun> prompts;
  int64_t R = 0;
  {
    int64_t t = 0;
    for (int64_t i = 0; i < B; ++i) {
      const SequenceStep& s = batch[i];
      out->row_begin.push_back(static_cast<int>(R));
      std::fill(table_of(host, 0, i), table_of(host, 0, i) + max_blocks, 0);
      std::copy(s.block_table.begin(), s.block_table.begin() + BlocksUsed(s), table_of(host, 0, i));
      for (int kind = 1; kind < kinds; ++kind) {
        // A local group's blocks from local_block_begin on; the indices before it (left the window) name its first
        // held block, which only the GEMM prompt path reads (gathered, then masked): finite, as the pool starts zeroed.
        const KvTableView local{s.local_block_table.data() + (kind - 1), kinds - 1, s.local_block_begin};
        int32_t* t = table_of(host, kind, i);
        std::fill(t, t + max_blocks, 0);
        for (int j = 0; j < BlocksUsed(s); ++j) t[j] = local.Block(std::max(j, s.local_block_begin));
      }
      // Attention work: a lone token decodes; a long run of prompt tokens goes through GEMMs; shorter runs are cut
      // into tiles of consecutive tokens.
      if (s.tokens.size() == 1) {
        host.single[num_single++] = static_cast<int32_t>(t);
      } else if (options_.prompt_attention_gemm &&
                 s.tokens.size() >= static_cast<size_t>(cuda::kPromptAttentionMinTokens)) {
        prompts.push_back({static_cast<int>(t), static_cast<int>(s.tokens.size()), s.start_pos, static_cast<int>(i)});
      } else {
        for (size_t j = 0; j < s.tokens.size(); j += cuda::kAttentionTileQueries) {
          host.tile_first[num_tiles] = static_cast<int32_t>(t + j);
          host.tile_count[num_tiles++] =
              static_cast<int32_t>(std::min<size_t>(cuda::kAttentionTileQueries, s.tokens.size() - j));
        }
      }
      for (size_t j = 0; j < s.tokens.size(); ++j, ++t) {
        const int32_t pos = s.start_pos + static_cast<int32_t>(j);
        host.tokens[t] = s.tokens[j];
        host.positions[t] = pos;
        host.seq_of_token[t] = static_cast<int32_t>(i);
        for (int kind = 0; kind < kinds; ++kind) {
          host.cache_row[kind * T + t] = static_cast<int64_t>(table_of(host, kind, i)[pos / block_size_]) * block_stride_ +
                                         static_cast<int64_t>(pos % block_size_) * D;
        }
        if (s.logits == LogitsWanted::kAll || (s.logits == LogitsWanted::kLast && j + 1 == s.tokens.size())) {
          host.rows[R++] = static_cast<int32_t>(t);
        }
      }
    }
  }
  auto meta = meta_.At(meta_bytes, "step metadata");
  if (!meta.ok()) return meta.status();
  const StepMeta dev = StepMeta::In(*meta, T, kinds);

  auto x = x_.At(T * H * 4, "activations");
  auto xn = xn_.At(std::max(T, R) * H * ab, "activations");
  auto qkv = qkv_.At(T * qkv_ld * 4, "activations");
  auto attn = attn_.At(T * q_dim * ab, "activations");
  auto proj = proj_.At(T * H * 4, "activations");
  auto gate_up = gate_up_.At(T * 2 * I * 4, "activations");
  auto act = act_buf_.At(T * I * ab, "activations");
  auto logits = logits_.At(std::max<int64_t>(R, 1) * tp.vocab_slice * 4, "logits");
  for (const absl::Status& s : {x.status(), xn.status(), qkv.status(), attn.status(), proj.status(), gate_up.status(),
                                act.status(), logits.status()}) {
    if (!s.ok()) return s;
  }
  float* xf = static_cast<float*>(*x);
  float* projf = static_cast<float*>(*proj);
  float* qkvf = static_cast<float*>(*qkv);
  float* gate_upf = static_cast<float*>(*gate_up);

  // Flash-decoding: enough blocks for lone tokens to fill the GPU twice over, whatever their context length.
  const int64_t decode_blocks = std::max<int64_t>(1, static_cast<int64_t>(num_single) * tp.num_q_heads);
  const int decode_splits = static_cast<int>(
      std::clamp<int64_t>((2 * multiprocessors_ + decode_blocks - 1) / decode_blocks, 1, cuda::kAttentionMaxSplits));
  auto partials = partials_.At(std::max<int64_t>(1, decode_blocks * decode_splits * (D + 2)) * 4, "attention partials");
  if (!partials.ok()) return partials.status();
  PromptScratch prompt_scratch;
  if (!prompts.empty()) {
    auto made = PromptScratchFor(prompts, T, qkvf);
    if (!made.ok()) return made.status();
    prompt_scratch = *made;
  }
  const int64_t slice = tp.vocab_slice;
  float* logitsf = static_cast<float*>(*logits);
  // The step's device work, from the metadata upload to the logits: run as is, or captured into a graph.
  auto enqueue = [&]() -> absl::Status {
    if (last_clocked_) clock_.Start(&device_timings_.other_seconds, stream_);
    GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(*meta, host_meta_, meta_bytes, cudaMemcpyHostToDevice, stream_));
    if (adapters_->active()) {
      if (auto s = adapters_->EnqueueLayout(stream_); !s.ok()) return s;
    }
    const MatrixView& embed = weights_->embed();
    const float embed_scale = std::sqrt(static_cast<float>(H));
    if (embed_bf16_.get() != nullptr) {
      GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchEmbed(embed_bf16_.as<uint16_t>(), embed.rows, H, dev.tokens,
                                                   static_cast<int>(T), tp.vocab_begin, embed_scale, xf, stream_));
    } else if (head_.quantized()) {
      GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchEmbedQuantized(head_.q, dev.tokens, static_cast<int>(T), tp.vocab_begin,
                                                            embed_scale, xf, stream_));
    } else if (act_ == Dtype::kF32) {
      GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchEmbedF32(static_cast<const float*>(head_.dense), embed.rows, H, dev.tokens,
                                                      static_cast<int>(T), tp.vocab_begin, embed_scale, xf, stream_));
    } else {
      GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchEmbed(static_cast<const uint16_t*>(head_.dense), embed.rows, H, dev.tokens,
                                                   static_cast<int>(T), tp.vocab_begin, embed_scale, xf, stream_));
    }
    if (auto s = AllReduce(xf, T * H); !s.ok()) return s;
    if (auto s = hooks_.Capture(ActivationKind::kResidual, 0, xf, stream_); !s.ok()) return s;
    const float q_scale = static_cast<float>(std::pow(static_cast<double>(c.QueryScalar()), -0.5));

    for (int layer = 0; layer < c.num_layers; ++layer) {
      const DeviceLayer& lw = layers_[layer];
      if (layer == 0) {
        GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchRmsNorm(xf, nullptr, static_cast<int>(T), H, lw.attn_norm.as<float>(),
                                                       c.rms_norm_eps, *xn, act_, stream_));
      } else {
        // The previous layer's MLP output joins the residual stream, fused with this layer's norm.
        GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchAddRmsNorm(xf, projf, static_cast<int>(T), H, lw.attn_norm.as<float>(),
                                                          c.rms_norm_eps, *xn, act_, stream_));
      }
      stage(&StepTimings::matmul_seconds);
      if (auto s = Project(*xn, T, lw.qkv, qkvf, qkv_ld); !s.ok()) return s;
      // LoRA terms of q, k and v join their columns of qkv before RoPE, as a merged weight would.
      for (const auto& [target, column] : {std::pair{LoraTarget::kQ, int64_t{0}}, std::pair{LoraTarget::kK, q_dim},
                                           std::pair{LoraTarget::kV, q_dim + kv_dim}}) {
        if (auto s = adapters_->Add(layer, target, *xn, H, act_, qkvf + column, qkv_ld, lora_chunks, stream_); !s.ok()) {
          return s;
        }
      }
      stage(&StepTimings::attention_seconds);
      // The layer's place in its blocks, and its kind's block tables and cache rows.
      const int64_t slot = kv_layout_.Slot(layer);
      const int kind = TableKind(layer);
      const int32_t* tables = table_of(dev, kind, 0);
      char* k_base = kv_.as<char>() + (slot * 2 * layer_stride_) * ab;
      char* v_base = kv_.as<char>() + (slot * 2 + 1) * layer_stride_ * ab;
      GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchRopeAndCacheWrite(
          qkvf, static_cast<int>(T), qkv_ld, tp.num_q_heads, tp.num_kv_heads, static_cast<int>(D), CosSinOf(layer),
          dev.positions, dev.cache_row + kind * T, head_stride_, k_base, v_base, act_, q_scale, lw.q_norm.as<float>(),
          lw.k_norm.as<float>(), c.rms_norm_eps, stream_));
      cuda::AttentionArgs a{};
      a.qkv = qkvf;
      a.ld = qkv_ld;
      a.num_q = tp.num_q_heads;
      a.head_dim = static_cast<int>(D);
      a.single_tokens = dev.single;
      a.num_single = num_single;
      a.splits = decode_splits;
      a.partials = decode_splits > 1 ? static_cast<float*>(*partials) : nullptr;
      a.tile_first = dev.tile_first;
      a.tile_count = dev.tile_count;
      a.num_tiles = num_tiles;
      a.positions = dev.positions;
      a.seq_of_token = dev.seq_of_token;
      a.block_tables = tables;
      a.max_blocks = max_blocks;
      a.k_cache = k_base;
      a.v_cache = v_base;
      a.kv_type = act_;
      a.block_size = block_size_;
      a.block_stride = block_stride_;
      a.head_stride = head_stride_;
      a.heads_per_kv = c.heads_per_kv();
      a.q_head_begin = tp.q_head_begin;
      a.kv_head_begin = tp.kv_head_begin;
      a.out = *attn;
      a.out_type = act_;
      a.streamed = options_.streamed_attention;
      a.window = WindowOf(layer);
      a.softcap = c.attn_logit_softcap;
      GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchAttention(a, stream_));
      if (auto s = AttendPromptRuns(layer, prompts, prompt_scratch, qkvf, k_base, v_base, tables, max_blocks,
                                    *attn);
          !s.ok()) {
        return s;
      }
      if (auto s = hooks_.AblateHeads(layer, tp, static_cast<int>(D), *attn, act_, stream_); !s.ok()) return s;
      stage(&StepTimings::matmul_seconds);
      if (auto s = RowParallel(*attn, T, lw.o, projf, layer, LoraTarget::kO, lora_chunks); !s.ok()) return s;
      stage(&StepTimings::other_seconds);
      // Gemma 2/3 normalize what attention adds (after the all-reduce: the norm needs the whole row).
      if (lw.post_attn_norm.get() != nullptr) {
        GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchRmsNorm(projf, nullptr, static_cast<int>(T), H,
                                                       lw.post_attn_norm.as<float>(), c.rms_norm_eps, projf,
                                                       Dtype::kF32, stream_));
      }
      // The attention term as it joins the stream (after any post-norm, which would undo a scale before it).
      if (auto s = hooks_.ScaleAttention(layer, projf, stream_); !s.ok()) return s;
      if (auto s = hooks_.Capture(ActivationKind::kAttentionOutput, layer, projf, stream_); !s.ok()) return s;
      GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchAddRmsNorm(xf, projf, static_cast<int>(T), H, lw.ffn_norm.as<float>(),
                                                        c.rms_norm_eps, *xn, act_, stream_));
      stage(&StepTimings::matmul_seconds);
      if (auto s = Project(*xn, T, lw.gate_up, gate_upf, 2 * I); !s.ok()) return s;
      if (auto s = adapters_->Add(layer, LoraTarget::kGate, *xn, H, act_, gate_upf, 2 * I, lora_chunks, stream_); !s.ok()) {
        return s;
      }
      if (auto s = adapters_->Add(layer, LoraTarget::kUp, *xn, H, act_, gate_upf + I, 2 * I, lora_chunks, stream_);
          !s.ok()) {
        return s;
      }
      stage(&StepTimings::other_seconds);
      GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchGeluMul(gate_upf, static_cast<int>(T), I, *act, act_, stream_));
      stage(&StepTimings::matmul_seconds);
      if (auto s = RowParallel(*act, T, lw.down, projf, layer, LoraTarget::kDown, lora_chunks); !s.ok()) return s;
      stage(&StepTimings::other_seconds);
      if (lw.post_ffn_norm.get() != nullptr) {
        GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchRmsNorm(projf, nullptr, static_cast<int>(T), H,
                                                       lw.post_ffn_norm.as<float>(), c.rms_norm_eps, projf,
                                                       Dtype::kF32, stream_));
      }
      if (auto s = hooks_.ScaleMlp(layer, projf, stream_); !s.ok()) return s;
      if (auto s = hooks_.Capture(ActivationKind::kMlpOutput, layer, projf, stream_); !s.ok()) return s;
      if (hooks_.NeedsResidualAfter(layer)) {
        // The layer's output in full, for a steer or a read: the MLP term joins the stream here, and the next fused
        // add (this layer's successor's norm, or the add after the last layer) adds zeros, which changes no value.
        GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchAdd(xf, projf, T * H, stream_));
        GEMMA_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(projf, 0, T * H * 4, stream_));
        if (auto s = hooks_.Steer(layer, xf, stream_); !s.ok()) return s;
        if (layer + 1 < c.num_layers) {
          if (auto s = hooks_.Capture(ActivationKind::kResidual, layer + 1, xf, stream_); !s.ok()) return s;
        }
      }
    }
    GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchAdd(xf, projf, T * H, stream_));
    if (hooks_.Reads(ActivationKind::kResidual, c.num_layers)) {
      // Hugging Face's last hidden state is the final norm's output, for every token of the reading rows; proj is
      // free from here on.
      GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchRmsNorm(xf, nullptr, static_cast<int>(T), H, final_norm_.as<float>(),
                                                     c.rms_norm_eps, projf, Dtype::kF32, stream_));
      if (auto s = hooks_.Capture(ActivationKind::kResidual, c.num_layers, projf, stream_); !s.ok()) return s;
    }

    if (R == 0) return absl::OkStatus();
    GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchRmsNorm(xf, dev.rows, static_cast<int>(R), H, final_norm_.as<float>(),
                                                   c.rms_norm_eps, *xn, act_, stream_));
    // A last rank's slice may hold fewer vocabulary rows than the slice width: its padding columns read as 0.
    if (embed.rows < slice) GEMMA_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(logitsf, 0, R * slice * 4, stream_));
    stage(&StepTimings::matmul_seconds);
    if (auto s = Project(*xn, R, head_, logitsf, slice); !s.ok()) return s;
    stage(&StepTimings::other_seconds);
    if (c.final_logit_softcap > 0) {
      GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchSoftCap(logitsf, R * slice, c.final_logit_softcap, stream_));
    }
    return absl::OkStatus();
  };
  enqueue_collectives_ = graph_step;
  absl::Status ran;
  {
    cuda::ProgrammaticLaunchScope overlap(options_.programmatic_launch);
    ran = graph_step ? RunAsGraph(GraphKey(static_cast<int>(B), adapters_->active() ? adapters_->targets() : 0u), enqueue)
                     : enqueue();
  }
  enqueue_collectives_ = false;
  if (!ran.ok()) return ran;
  // The step's enqueued all-reduces are waited for here, where a dead peer fails the step within the timeout
  // (a plain synchronize would wait forever on NCCL).
  if (graph_step && tp.world > 1) {
    if (auto s = exchange_->Wait(stream_); !s.ok()) return s;
  }
  out->vocab_size = c.vocab_size;
  out->values.resize(logits_to_host ? static_cast<size_t>(R) * c.vocab_size : 0);
  sampled->clear();
  // Waits for the step's device work; the clock's last interval ends there.
  auto finish = [&]() -> absl::Status {
    if (last_clocked_) clock_.Mark(&device_timings_.other_seconds, stream_);
    GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    if (last_clocked_) clock_.Collect();
    hooks_.TakeActivations(&out->activations);  // rank 0's reads (followers', and rows without reads, empty)
    return absl::OkStatus();
  };
  if (R == 0) {
    if (auto s = finish(); !s.ok()) return s;
    if (!samples.empty()) return absl::InvalidArgumentError("samples asked of a step that wants no logits");
    return absl::OkStatus();
  }
  // Logits in vocabulary order on the device: this rank's own, or every rank's slice gathered and placed.
  float* device_logits = logitsf;
  if (tp.world > 1) {
    auto gathered = gathered_.At(static_cast<size_t>(tp.world) * R * slice * 4, "gathered logits");
    auto placed = placed_.At(static_cast<size_t>(R) * c.vocab_size * 4, "logits");
    if (!gathered.ok()) return gathered.status();
    if (!placed.ok()) return placed.status();
    stage(&StepTimings::collective_seconds);
    if (auto s = exchange_->AllGather(logitsf, R * slice, static_cast<float*>(*gathered), stream_); !s.ok()) return s;
    stage(&StepTimings::other_seconds);
    device_logits = static_cast<float*>(*placed);
    for (int r = 0; r < tp.world; ++r) {
      const int64_t begin = std::min<int64_t>(c.vocab_size, r * slice);
      const int64_t count = std::min<int64_t>(c.vocab_size, (r + 1) * slice) - begin;
      if (count <= 0) continue;
      GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(device_logits + begin, c.vocab_size * 4,
                                                   static_cast<float*>(*gathered) + static_cast<int64_t>(r) * R * slice,
                                                   slice * 4, count * 4, R, cudaMemcpyDeviceToDevice, stream_));
    }
  }
  if (!samples.empty()) {
    if (auto s = SampleOnDevice(device_logits, R, samples, sampled); !s.ok()) return s;
  }
  if (logits_to_host) {
    GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out->values.data(), device_logits, R * c.vocab_size * 4,
                                               cudaMemcpyDeviceToHost, stream_));
  } else {
    out->values.clear();
  }
  return finish();
}

absl::Status CudaBackend::SampleOnDevice(const float* logits, int64_t R, std::span<const RowSample> samples,
                                         std::vector<SampledToken>* sampled) {
  const int vocab = config().vocab_size;
  const size_t mask_words = (static_cast<size_t>(vocab) + 31) / 32;
  bool masked = false;
  for (const RowSample& r : samples) masked = masked || !r.allowed.empty();
  // The buffer holds as many draws as the largest step has rows; more draws (several per row) go in turns, as do
  // masked draws (a step's sequences at a time) and penalized ones (kPenalizedDrawsPerTurn a turn).
  size_t capacity = sampling_.buffer.bytes() / kDrawBytes;
  if (masked && token_masks_.fixed) capacity = std::min(capacity, token_masks_.buffer.bytes() / (mask_words * 4));
  if (capacity == 0) return absl::InternalError("no device buffer for sampling");
  for (size_t first = 0, n = 0; first < samples.size(); first += n) {
    // This turn's draws: up to `capacity`, of which at most kPenalizedDrawsPerTurn penalized.
    n = 0;
    for (int penalized_in_turn = 0; first + n < samples.size() && n < capacity; ++n) {
      if (!samples[first + n].params.has_penalties()) continue;
      if (penalized_in_turn == kPenalizedDrawsPerTurn) break;
      ++penalized_in_turn;
    }
    char* base = static_cast<char*>(sampling_.buffer.get());
    auto* d_params = reinterpret_cast<cuda::RowSampling*>(base);
    auto* d_drawn = reinterpret_cast<int32_t*>(base + n * sizeof(cuda::RowSampling));
    auto* d_logprobs = reinterpret_cast<float*>(d_drawn + n);
    auto* d_top_ids = reinterpret_cast<int32_t*>(d_logprobs + n);
    auto* d_top_lps = reinterpret_cast<float*>(d_top_ids + n * cuda::kMaxTopLogprobs);
    std::vector<cuda::RowSampling> params(n);
    std::vector<cuda::PenaltyRow> penalty_rows;
    std::vector<int32_t> penalty_words;  // per penalized draw: its distinct tokens, then their generated counts
    uint32_t* masks = nullptr;
    for (size_t i = 0; i < n; ++i) {
      const RowSample& r = samples[first + i];
      if (r.row < 0 || r.row >= R) {
        return absl::InvalidArgumentError(absl::StrCat("sample row ", r.row, " is outside the step's ", R, " logits rows"));
      }
      if (r.top_logprobs < 0 || r.top_logprobs > cuda::kMaxTopLogprobs) {
        return absl::InvalidArgumentError(absl::StrCat("top_logprobs ", r.top_logprobs, " is outside [0, ",
                                                       cuda::kMaxTopLogprobs, "]"));
      }
      params[i] = {r.row, r.params.temperature, r.params.top_k, r.params.top_p, r.params.seed, r.position, nullptr,
                   nullptr, r.top_logprobs, d_top_ids + i * cuda::kMaxTopLogprobs,
                   d_top_lps + i * cuda::kMaxTopLogprobs};
      if (r.params.has_penalties()) {
        const auto counts = PenaltyCounts(r.penalty_history, r.penalty_prompt_len, vocab);
        if (counts.size() > static_cast<size_t>(limits_.max_context) + 1) {
          return absl::InvalidArgumentError(absl::StrCat("a penalty history of ", counts.size(),
                                                         " distinct tokens is longer than the context"));
        }
        float* adjusted = penalized_.buffer.as<float>() + penalty_rows.size() * static_cast<size_t>(vocab);
        penalty_rows.push_back({logits + static_cast<int64_t>(r.row) * vocab, adjusted, nullptr, nullptr,
                                static_cast<int>(counts.size()), r.params.repetition_penalty,
                                r.params.presence_penalty, r.params.frequency_penalty});
        for (const auto& [t, generated] : counts) penalty_words.push_back(t);
        for (const auto& [t, generated] : counts) penalty_words.push_back(generated);
        params[i].adjusted = adjusted;
      }
      if (r.allowed.empty()) continue;
      if (r.allowed.size() != mask_words) {
        return absl::InvalidArgumentError(absl::StrCat("a token mask of ", r.allowed.size(), " words; the vocabulary needs ",
                                                       mask_words));
      }
      // Row i's mask at word i * mask_words of the masks buffer (planned for a step's largest number of rows).
      if (masks == nullptr) {
        auto buffer = token_masks_.At(n * mask_words * 4, "structured output masks");
        if (!buffer.ok()) return buffer.status();
        masks = static_cast<uint32_t*>(*buffer);
      }
      params[i].allowed = masks + i * mask_words;
      GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(masks + i * mask_words, r.allowed.data(), mask_words * 4,
                                                 cudaMemcpyHostToDevice, stream_));
    }
    if (!penalty_rows.empty()) {
      // [PenaltyRow entries][each row's tokens, then its counts], in one copy.
      char* pbase = static_cast<char*>(penalties_.buffer.get());
      auto* words = reinterpret_cast<int32_t*>(pbase + penalty_rows.size() * sizeof(cuda::PenaltyRow));
      for (size_t j = 0, at = 0; j < penalty_rows.size(); ++j) {
        penalty_rows[j].tokens = words + at;
        penalty_rows[j].generated = words + at + penalty_rows[j].count;
        at += 2 * static_cast<size_t>(penalty_rows[j].count);
      }
      const size_t row_bytes = penalty_rows.size() * sizeof(cuda::PenaltyRow), word_bytes = penalty_words.size() * 4;
      if (row_bytes + word_bytes > penalties_.buffer.bytes()) {
        return absl::InternalError("penalty histories exceed the buffer planned at start");
      }
      GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(pbase, penalty_rows.data(), row_bytes, cudaMemcpyHostToDevice, stream_));
      GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(words, penalty_words.data(), word_bytes, cudaMemcpyHostToDevice, stream_));
      GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchPenalizeRows(reinterpret_cast<const cuda::PenaltyRow*>(pbase),
                                                          static_cast<int>(penalty_rows.size()), vocab, stream_));
    }
    GEMMA_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(d_params, params.data(), n * sizeof(cuda::RowSampling), cudaMemcpyHostToDevice, stream_));
    GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchSampleRows(logits, static_cast<int>(n), vocab, d_params, d_drawn,
                                                      d_logprobs, stream_));
    // Token, log-prob and the top log-probs of every draw, in one copy.
    const size_t out_bytes = n * 8 + n * cuda::kMaxTopLogprobs * 8;
    std::vector<char> out(out_bytes);
    GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out.data(), d_drawn, out_bytes, cudaMemcpyDeviceToHost, stream_));
    // `params`, `penalty_rows` and `penalty_words` go at the end of this turn.
    GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    const auto* ids = reinterpret_cast<const int32_t*>(out.data());
    const auto* lps = reinterpret_cast<const float*>(ids + n);
    const auto* top_ids = reinterpret_cast<const int32_t*>(lps + n);
    const auto* top_lps = reinterpret_cast<const float*>(top_ids + n * cuda::kMaxTopLogprobs);
    for (size_t i = 0; i < n; ++i) {
      SampledToken& drawn = sampled->emplace_back(SampledToken{ids[i], lps[i], {}});
      for (int k = 0; k < params[i].top_n; ++k) {
        drawn.top_logprobs.push_back({top_ids[i * cuda::kMaxTopLogprobs + k], top_lps[i * cuda::kMaxTopLogprobs + k]});
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace cuda

bool CudaBackendBuilt() { return true; }

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(std::shared_ptr<const ModelWeights> weights,
                                                           const KvCacheOptions& kv_options,
                                                           const CudaBackendOptions& options,
                                                           CudaCollective collective) {
  // Before the device: a model the kernels would compute wrong is refused on every machine alike.
  if (auto s = CheckCudaModelSupport(weights->config(), weights->tp()); !s.ok()) return s;
  const int devices = CudaDeviceCount();
  if (options.device < 0 || options.device >= devices) {
    return absl::FailedPreconditionError(absl::StrCat("CUDA device ", options.device, " is not present; this process sees ",
                                                      devices, " device(s)"));
  }
  auto exchange = cuda::MakeTensorExchange(collective, options.device);
  if (!exchange.ok()) return exchange.status();
  const TensorParallel& tp = weights->tp();
  if ((*exchange)->rank() != tp.rank || (*exchange)->world() != tp.world) {
    return absl::InvalidArgumentError(absl::StrCat("weights are sliced for rank ", tp.rank, "/", tp.world,
                                                   " but the collective is rank ", (*exchange)->rank(), "/",
                                                   (*exchange)->world()));
  }
  auto backend = std::make_unique<cuda::CudaBackend>(std::move(weights), std::move(*exchange), options);
  if (auto s = backend->Init(kv_options); !s.ok()) return s;
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace gemma
