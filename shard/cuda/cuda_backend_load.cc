#include <cmath>
#include <utility>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "shard/cuda/cuda_backend_impl.h"
#include "shard/cuda/cuda_status.h"
#include "shard/checkpoint/progress.h"

namespace gemma::cuda {

absl::StatusOr<DeviceBuffer> CudaBackend::UploadFloats(const std::vector<float>& v, const std::string& what) {
  auto b = DeviceBuffer::Allocate(v.size() * sizeof(float), what);
  if (!b.ok()) return b.status();
  GEMMA_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(b->get(), v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice, stream_));
  GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));  // `v` may go once this returns
  return b;
}

// Every upload goes through stream_ and waits for it: a plain cudaMemcpy from pageable memory (the mapped
// checkpoint) may return before its DMA lands, and nothing would order it before kernels on stream_, which does not
// synchronize with the default stream.
absl::Status CudaBackend::Upload(const MatrixView& m, const DeviceBuffer& dst, int64_t row_offset) {
  if (m.format != WeightFormat::kBF16) {
    return absl::UnimplementedError(absl::StrCat("the CUDA backend uploads bf16 weights only, not ",
                                                 WeightFormatName(m.format)));
  }
  const size_t row_bytes = static_cast<size_t>(m.cols) * 2;
  if (act_ == Dtype::kBf16) {
    GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(dst.as<uint16_t>() + row_offset * m.cols, row_bytes, m.data,
                                                 static_cast<size_t>(m.stride) * 2, row_bytes, m.rows,
                                                 cudaMemcpyHostToDevice, stream_));
    GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    return absl::OkStatus();
  }
  // f32 mode: stage the bf16 rows on the device and widen them there (exact).
  auto staged = DeviceBuffer::Allocate(row_bytes * m.rows, "a weight matrix being converted to f32");
  if (!staged.ok()) return staged.status();
  GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(staged->get(), row_bytes, m.data, static_cast<size_t>(m.stride) * 2,
                                               row_bytes, m.rows, cudaMemcpyHostToDevice, stream_));
  GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchBf16ToF32(staged->as<uint16_t>(), dst.as<float>() + row_offset * m.cols,
                                                   m.rows * m.cols, stream_));
  GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::StatusOr<DeviceBuffer> CudaBackend::UploadMatrices(std::initializer_list<const MatrixView*> parts,
                                                         const std::string& what) {
  int64_t rows = 0;
  const int64_t cols = (*parts.begin())->cols;
  for (const MatrixView* m : parts) rows += m->rows;
  auto b = DeviceBuffer::Allocate(static_cast<size_t>(rows * cols) * cuda::DtypeBytes(act_), what);
  if (!b.ok()) return b.status();
  int64_t at = 0;
  for (const MatrixView* m : parts) {
    if (auto s = Upload(*m, *b, at); !s.ok()) return s;
    at += m->rows;
  }
  return b;
}

absl::Status CudaBackend::Init(const KvCacheOptions& kv_options) {
  const ModelConfig& c = config();
  const TensorParallel& tp = weights_->tp();
  GEMMA_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  GEMMA_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&multiprocessors_, cudaDevAttrMultiProcessorCount, options_.device));
  GemmOptions gemm_options;
  gemm_options.mode = options_.cublaslt_only    ? DecodeGemmMode::kCublasLtOnly
                      : options_.batch_invariant ? DecodeGemmMode::kBatchInvariant
                                                 : DecodeGemmMode::kFastest;
  gemm_options.multiprocessors = multiprocessors_;
  auto gemm = cuda::Gemm::Create(gemm_options);
  if (!gemm.ok()) return gemm.status();
  gemm_ = std::move(*gemm);

  Progress progress("copying weights to the GPU (layers)", c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    progress.Update(i);
    const LayerWeights& lw = weights_->layer(i);
    DeviceLayer d;
    const std::string layer = absl::StrCat("layer ", i, "'s ");
    auto qkv = UploadMatrices({&lw.q, &lw.k, &lw.v}, layer + "attention weights");
    auto o = UploadMatrices({&lw.o}, layer + "output projection");
    auto gate_up = UploadMatrices({&lw.gate, &lw.up}, layer + "MLP weights");
    auto down = UploadMatrices({&lw.down}, layer + "MLP down projection");
    auto an = UploadFloats(lw.attn_norm, layer + "norm");
    auto fn = UploadFloats(lw.ffn_norm, layer + "norm");
    for (const absl::Status& s : {qkv.status(), o.status(), gate_up.status(), down.status(), an.status(), fn.status()}) {
      if (!s.ok()) return s;
    }
    // Gemma 2/3's extra norms, where the model has them.
    for (auto [from, to] : {std::pair{&lw.post_attn_norm, &d.post_attn_norm}, std::pair{&lw.post_ffn_norm, &d.post_ffn_norm},
                            std::pair{&lw.q_norm, &d.q_norm}, std::pair{&lw.k_norm, &d.k_norm}}) {
      if (from->empty()) continue;
      auto b = UploadFloats(*from, layer + "norm");
      if (!b.ok()) return b.status();
      *to = std::move(*b);
    }
    d.qkv = std::move(*qkv);
    d.o = std::move(*o);
    d.gate_up = std::move(*gate_up);
    d.down = std::move(*down);
    d.attn_norm = std::move(*an);
    d.ffn_norm = std::move(*fn);
    layers_.push_back(std::move(d));
  }
  progress.Finish();
  const MatrixView& embed = weights_->embed();
  auto eb = DeviceBuffer::Allocate(static_cast<size_t>(embed.rows * embed.cols) * 2, "the embedding");
  if (!eb.ok()) return eb.status();
  embed_bf16_ = std::move(*eb);
  const size_t row_bytes = static_cast<size_t>(embed.cols) * 2;
  GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(embed_bf16_.get(), row_bytes, embed.data,
                                               static_cast<size_t>(embed.stride) * 2, row_bytes, embed.rows,
                                               cudaMemcpyHostToDevice, stream_));
  GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  if (act_ == Dtype::kF32) {
    auto ei = UploadMatrices({&embed}, "the output projection (f32)");
    if (!ei.ok()) return ei.status();
    embed_in_ = std::move(*ei);
  }
  auto fnorm = UploadFloats(weights_->final_norm(), "the final norm");
  if (!fnorm.ok()) return fnorm.status();
  final_norm_ = std::move(*fnorm);

  // cos/sin per position exactly as the CPU backend computes them (float exponent and power, linear scaling
  // dividing the frequency, std::cos/sin): one table for global layers, one for local layers where they differ.
  auto rope_table = [&](float theta, float scale) {
    const int half = c.head_dim / 2;
    std::vector<float> inv_freq(half), table(static_cast<size_t>(c.max_position_embeddings) * c.head_dim);
    for (int i = 0; i < half; ++i) {
      inv_freq[i] = 1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(c.head_dim)) / scale;
    }
    for (int64_t p = 0; p < c.max_position_embeddings; ++p) {
      for (int i = 0; i < half; ++i) {
        const float angle = static_cast<float>(p) * inv_freq[i];
        table[p * c.head_dim + 2 * i] = std::cos(angle);
        table[p * c.head_dim + 2 * i + 1] = std::sin(angle);
      }
    }
    return UploadFloats(table, "the RoPE table");
  };
  auto cs = rope_table(c.rope_theta, c.rope_global_scale);
  if (!cs.ok()) return cs.status();
  cos_sin_ = std::move(*cs);
  const float local_theta = c.rope_local_theta > 0 ? c.rope_local_theta : c.rope_theta;
  bool any_local = false;
  for (int i = 0; i < c.num_layers; ++i) any_local = any_local || c.IsLocal(i);
  if (any_local && (local_theta != c.rope_theta || c.rope_global_scale != 1.0f)) {
    auto local = rope_table(local_theta, 1.0f);
    if (!local.ok()) return local.status();
    cos_sin_local_ = std::move(*local);
  }

  for (const DeviceLayer& l : layers_) {
    for (const DeviceBuffer* b : {&l.qkv, &l.o, &l.gate_up, &l.down, &l.attn_norm, &l.ffn_norm, &l.post_attn_norm,
                                  &l.post_ffn_norm, &l.q_norm, &l.k_norm}) {
      memory_.weights += static_cast<int64_t>(b->bytes());
    }
  }
  for (const DeviceBuffer* b : {&embed_bf16_, &embed_in_, &final_norm_, &cos_sin_, &cos_sin_local_}) {
    memory_.weights += static_cast<int64_t>(b->bytes());
  }

  limits_ = options_.limits.Resolved(c);
  if (limits_.max_tokens < 1 || limits_.max_sequences < 1) {
    return absl::InvalidArgumentError(absl::StrCat("step limits of ", limits_.max_tokens, " tokens and ",
                                                   limits_.max_sequences, " sequences; allowed: at least 1 each"));
  }
  if (kv_options.block_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("KV block size ", kv_options.block_size, "; allowed: >= 1"));
  }
  block_size_ = kv_options.block_size;
  head_stride_ = static_cast<int64_t>(block_size_) * c.head_dim;
  layer_stride_ = tp.num_kv_heads * head_stride_;
  kv_layout_ = KvLayout(c, kv_options.windowed);
  block_stride_ = kv_layout_.BlockValues(block_size_, tp.num_kv_heads, static_cast<int>(c.head_dim));
  if (kv_options.memory_fraction <= 0 && kv_options.num_blocks <= 0 &&
      kv_options.max_bytes < block_stride_ * cuda::DtypeBytes(act_)) {
    return absl::InvalidArgumentError(absl::StrCat("the KV cache budget of ", kv_options.max_bytes >> 20,
                                                   " MiB holds no block (one block is ",
                                                   block_stride_ * cuda::DtypeBytes(act_), " bytes)"));
  }
  if (auto s = ReserveStepBuffers(); !s.ok()) return s;
  if (auto s = ProfileAndAllocateKv(kv_options); !s.ok()) return s;
  GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

}  // namespace gemma::cuda
