#include <algorithm>
#include <span>

#include "shard/cuda/cuda_backend_impl.h"
#include "shard/cuda/cuda_status.h"
#include "shard/cuda/prompt_attention.h"

namespace gemma::cuda {

absl::StatusOr<CudaBackend::PromptScratch> CudaBackend::PromptScratchFor(std::span<const PromptRun> runs, int64_t T,
                                                                         float* qkv) {
  const TensorParallel& tp = weights_->tp();
  const int64_t D = config().head_dim, ab = cuda::DtypeBytes(act_);
  const int64_t kv_dim = tp.num_kv_heads * D, qkv_ld = tp.num_q_heads * D + 2 * kv_dim;
  size_t score_bytes = 0, kv_bytes = 0;
  for (const PromptRun& p : runs) {
    const int keys = p.start_pos + p.tokens;
    score_bytes = std::max(score_bytes, cuda::PromptAttentionScratchBytes(keys, p.tokens, tp.num_q_heads, act_));
    if (p.start_pos > 0) kv_bytes = std::max<size_t>(kv_bytes, static_cast<size_t>(keys) * 2 * kv_dim * ab);
  }
  // Sized at start for the largest step (ReserveStepBuffers): these calls only check.
  PromptScratch scratch;
  scratch.qkv = qkv;
  auto scores = prompt_scores_.At(score_bytes, "prompt attention scores");
  if (!scores.ok()) return scores.status();
  scratch.scores = *scores;
  if (kv_bytes > 0) {
    auto kv = prompt_kv_.At(kv_bytes, "prompt attention keys and values");
    if (!kv.ok()) return kv.status();
    scratch.kv = static_cast<char*>(*kv);
  }
  if (act_ == Dtype::kBf16) {
    auto q16 = prompt_qkv_.At(T * qkv_ld * 2, "prompt attention inputs");
    if (!q16.ok()) return q16.status();
    scratch.qkv = *q16;
  }
  return scratch;
}

absl::Status CudaBackend::AttendPromptRuns(int layer, std::span<const PromptRun> runs, const PromptScratch& scratch,
                                           const float* qkv, const char* k_base, const char* v_base,
                                           const int32_t* tables, int max_blocks, void* attn) {
  const ModelConfig& c = config();
  const TensorParallel& tp = weights_->tp();
  const int64_t D = c.head_dim, ab = cuda::DtypeBytes(act_);
  const int64_t q_dim = tp.num_q_heads * D, kv_dim = tp.num_kv_heads * D, qkv_ld = q_dim + 2 * kv_dim;
  for (const PromptRun& p : runs) {
    if (act_ == Dtype::kBf16) {
      GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchF32ToBf16(qkv + p.first * qkv_ld,
                                                       static_cast<uint16_t*>(scratch.qkv) + p.first * qkv_ld,
                                                       p.tokens * qkv_ld, stream_));
    }
    cuda::PromptAttentionArgs pa;
    const char* rows = static_cast<const char*>(scratch.qkv) + p.first * qkv_ld * ab;
    pa.q = rows;
    pa.q_ld = qkv_ld;
    if (p.start_pos == 0) {  // every key is among the step's own rows
      pa.k = rows + q_dim * ab;
      pa.v = rows + (q_dim + kv_dim) * ab;
      pa.kv_ld = qkv_ld;
    } else {  // earlier keys are only in the cache (this step's were written to it before)
      GEMMA_CUDA_RETURN_IF_ERROR(cuda::LaunchGatherKv(k_base, v_base, tables + static_cast<int64_t>(p.sequence) * max_blocks,
                                                      p.start_pos + p.tokens, block_size_, block_stride_, head_stride_,
                                                      tp.num_kv_heads, static_cast<int>(D), scratch.kv, act_, stream_));
      pa.k = scratch.kv;
      pa.v = scratch.kv + kv_dim * ab;
      pa.kv_ld = 2 * kv_dim;
    }
    pa.in = act_;
    pa.start_pos = p.start_pos;
    pa.tokens = p.tokens;
    pa.num_q = tp.num_q_heads;
    pa.head_dim = static_cast<int>(D);
    pa.heads_per_kv = c.heads_per_kv();
    pa.q_head_begin = tp.q_head_begin;
    pa.kv_head_begin = tp.kv_head_begin;
    pa.out = static_cast<char*>(attn) + p.first * q_dim * ab;
    pa.out_ld = q_dim;
    pa.out_type = act_;
    pa.scratch = scratch.scores;
    pa.window = WindowOf(layer);
    pa.softcap = c.attn_logit_softcap;
    if (auto s = cuda::EnqueuePromptAttention(*gemm_, pa, stream_); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace gemma::cuda
