#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "shard/cuda/cuda_backend_impl.h"
#include "shard/cuda/cuda_status.h"
#include "shard/checkpoint/progress.h"
#include "engine/status_macros.h"
#include "shard/model/dtype.h"

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
  const size_t row_bytes = static_cast<size_t>(m.cols) * 2;
  if (m.format != WeightFormat::kBF16) {
    // f32 (dequantized reference weights) or a quantized part beside parts of another format: dequantized here,
    // rows in batches, then rounded to bf16 in bf16 mode.
    const int64_t batch = std::max<int64_t>(1, (int64_t{16} << 20) / std::max<int64_t>(1, m.cols * 4));
    std::vector<float> rows;
    std::vector<uint16_t> rows16;
    const size_t ab = cuda::DtypeBytes(act_);
    for (int64_t r0 = 0; r0 < m.rows; r0 += batch) {
      const int64_t n = std::min(batch, m.rows - r0);
      rows.resize(static_cast<size_t>(n * m.cols));
      for (int64_t r = 0; r < n; ++r) DequantizeRow(m, r0 + r, rows.data() + r * m.cols);
      const void* src = rows.data();
      if (act_ == Dtype::kBf16) {
        rows16.resize(rows.size());
        for (size_t i = 0; i < rows.size(); ++i) rows16[i] = F32ToBf16(rows[i]);
        src = rows16.data();
      }
      GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst.as<char>() + (row_offset + r0) * m.cols * ab, src,
                                                 static_cast<size_t>(n * m.cols) * ab, cudaMemcpyHostToDevice, stream_));
      GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    }
    return absl::OkStatus();
  }
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

namespace {

std::optional<QuantFormat> QuantFormatOf(WeightFormat f) {
  switch (f) {
    case WeightFormat::kInt8:
      return QuantFormat::kInt8;
    case WeightFormat::kInt4:
      return QuantFormat::kInt4;
    case WeightFormat::kFp8:
      return QuantFormat::kFp8;
    case WeightFormat::kBF16:
    case WeightFormat::kF32:
      break;
  }
  return std::nullopt;
}

}  // namespace

absl::StatusOr<DeviceWeight> CudaBackend::UploadQuantized(std::initializer_list<const MatrixView*> parts,
                                                          const std::string& what) {
  const MatrixView& first = **parts.begin();
  DeviceWeight w;
  w.cols = first.cols;
  for (const MatrixView* m : parts) w.rows += m->rows;
  w.q.format = *QuantFormatOf(first.format);
  w.q.rows = w.rows;
  w.q.cols = w.cols;
  w.q.group_size = first.format == WeightFormat::kInt4 ? first.group_size : 0;
  const int64_t row_bytes = w.q.RowBytes(), groups = w.q.Groups();
  ASSIGN_OR_RETURN(w.codes, DeviceBuffer::Allocate(static_cast<size_t>(w.rows * row_bytes), what));
  ASSIGN_OR_RETURN(w.scales, DeviceBuffer::Allocate(static_cast<size_t>(w.rows * groups) * 4, what + " scales"));
  if (first.format == WeightFormat::kInt4) {
    ASSIGN_OR_RETURN(w.zeros, DeviceBuffer::Allocate(static_cast<size_t>(w.rows * groups) * 4, what + " zeros"));
  }
  int64_t at = 0;
  for (const MatrixView* m : parts) {
    // A view's rows are stride elements apart (a column slice of a tensor-parallel rank), its scales scale_stride.
    const int64_t src_row_bytes = m->format == WeightFormat::kInt4 ? m->stride / 2 : m->stride;
    GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(w.codes.as<uint8_t>() + at * row_bytes, row_bytes, m->codes,
                                                 src_row_bytes, row_bytes, m->rows, cudaMemcpyHostToDevice, stream_));
    const size_t scale_row = static_cast<size_t>(groups) * 4, scale_pitch = static_cast<size_t>(m->scale_stride) * 4;
    GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(w.scales.as<float>() + at * groups, scale_row, m->scales,
                                                 std::max(scale_row, scale_pitch), scale_row, m->rows,
                                                 cudaMemcpyHostToDevice, stream_));
    if (m->format == WeightFormat::kInt4) {
      GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(w.zeros.as<float>() + at * groups, scale_row, m->zeros,
                                                   std::max(scale_row, scale_pitch), scale_row, m->rows,
                                                   cudaMemcpyHostToDevice, stream_));
    }
    GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    at += m->rows;
  }
  w.q.codes = w.codes.as<uint8_t>();
  w.q.scales = w.scales.as<float>();
  w.q.zeros = w.zeros.get() != nullptr ? w.zeros.as<float>() : nullptr;
  return w;
}

absl::StatusOr<DeviceWeight> CudaBackend::UploadWeight(std::initializer_list<const MatrixView*> parts,
                                                       const std::string& what) {
  const MatrixView& first = **parts.begin();
  bool one_format = QuantFormatOf(first.format).has_value();
  for (const MatrixView* m : parts) {
    one_format = one_format && m->format == first.format && m->cols == first.cols &&
                 (m->format != WeightFormat::kInt4 || m->group_size == first.group_size);
  }
  if (one_format) return UploadQuantized(parts, what);
  DeviceWeight w;
  w.cols = first.cols;
  for (const MatrixView* m : parts) w.rows += m->rows;
  ASSIGN_OR_RETURN(w.owned, DeviceBuffer::Allocate(static_cast<size_t>(w.rows * w.cols) * cuda::DtypeBytes(act_), what));
  int64_t at = 0;
  for (const MatrixView* m : parts) {
    RETURN_IF_ERROR(Upload(*m, w.owned, at));
    at += m->rows;
  }
  w.dense = w.owned.get();
  return w;
}

absl::Status CudaBackend::CheckQuantizedFormats() const {
  bool fp8 = weights_->embed().format == WeightFormat::kFp8;
  for (int i = 0; i < config().num_layers; ++i) {
    const LayerWeights& lw = weights_->layer(i);
    for (const MatrixView* m : {&lw.q, &lw.k, &lw.v, &lw.o, &lw.gate, &lw.up, &lw.down}) {
      fp8 = fp8 || m->format == WeightFormat::kFp8;
    }
  }
  if (!fp8) return absl::OkStatus();
  int major = 0, minor = 0;
  GEMMA_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, options_.device));
  GEMMA_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, options_.device));
  if (major * 10 + minor < 89) {
    return absl::FailedPreconditionError(absl::StrCat(
        "fp8 weights need a GPU of compute capability 8.9 or later (Ada, Hopper, Blackwell); device ", options_.device,
        " is ", major, ".", minor, ": use --weights int8 or int4 on it, or bf16"));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::ReserveDequantScratch() {
  int64_t largest = 0;
  std::vector<const DeviceWeight*> all = {&head_};
  for (const DeviceLayer& l : layers_) all.insert(all.end(), {&l.qkv, &l.o, &l.gate_up, &l.down});
  const int64_t ab = cuda::DtypeBytes(act_);
  for (const DeviceWeight* w : all) {
    if (!w->quantized()) continue;
    largest = std::max(largest, std::min(w->rows * w->cols * ab, std::max(options_.dequant_scratch_bytes, w->cols * ab)));
  }
  if (largest > 0) {
    ASSIGN_OR_RETURN(dequant_, DeviceBuffer::Allocate(static_cast<size_t>(largest), "the dequantization scratch"));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::Init(const KvCacheOptions& kv_options) {
  const ModelConfig& c = config();
  const TensorParallel& tp = weights_->tp();
  GEMMA_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  RETURN_IF_ERROR(CheckQuantizedFormats());  // before any weight goes to the device
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
    auto qkv = UploadWeight({&lw.q, &lw.k, &lw.v}, layer + "attention weights");
    auto o = UploadWeight({&lw.o}, layer + "output projection");
    auto gate_up = UploadWeight({&lw.gate, &lw.up}, layer + "MLP weights");
    auto down = UploadWeight({&lw.down}, layer + "MLP down projection");
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
  if (embed.format == WeightFormat::kBF16) {
    // Looked up as bf16 in both modes (exact); in bf16 mode the same rows serve the output projection.
    auto eb = DeviceBuffer::Allocate(static_cast<size_t>(embed.rows * embed.cols) * 2, "the embedding");
    if (!eb.ok()) return eb.status();
    embed_bf16_ = std::move(*eb);
    const size_t row_bytes = static_cast<size_t>(embed.cols) * 2;
    GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(embed_bf16_.get(), row_bytes, embed.data,
                                                 static_cast<size_t>(embed.stride) * 2, row_bytes, embed.rows,
                                                 cudaMemcpyHostToDevice, stream_));
    GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  }
  if (embed.format == WeightFormat::kBF16 && act_ == Dtype::kBf16) {
    head_.rows = embed.rows;
    head_.cols = embed.cols;
    head_.dense = embed_bf16_.get();
  } else {
    ASSIGN_OR_RETURN(head_, UploadWeight({&embed}, "the output projection"));
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
    for (const DeviceWeight* w : {&l.qkv, &l.o, &l.gate_up, &l.down}) memory_.weights += w->bytes();
    for (const DeviceBuffer* b : {&l.attn_norm, &l.ffn_norm, &l.post_attn_norm, &l.post_ffn_norm, &l.q_norm, &l.k_norm}) {
      memory_.weights += static_cast<int64_t>(b->bytes());
    }
  }
  memory_.weights += head_.bytes();
  for (const DeviceBuffer* b : {&embed_bf16_, &final_norm_, &cos_sin_, &cos_sin_local_}) {
    memory_.weights += static_cast<int64_t>(b->bytes());
  }
  RETURN_IF_ERROR(ReserveDequantScratch());

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
