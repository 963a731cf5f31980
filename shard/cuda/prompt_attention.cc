#include "shard/cuda/prompt_attention.h"

#include <algorithm>
#include <vector>

#include "shard/cuda/cuda_status.h"

namespace gemma::cuda {
namespace {

// Scores and probabilities of one chunk stay within this, down to the smallest chunk.
constexpr size_t kScratchBudget = size_t{256} << 20;
// Large enough to fill the GPU with the narrow P V products (N = head_dim), small enough to skip most of the
// masked half of the scores.
constexpr int kMaxChunk = 512;
constexpr int kMinChunk = 16;

int64_t RoundUp8(int64_t n) { return (n + 7) / 8 * 8; }

int ChunkRows(int keys, int queries, int num_q, Dtype in) {
  const size_t per_row = static_cast<size_t>(num_q) * RoundUp8(keys) * (4 + DtypeBytes(in));
  int chunk = static_cast<int>(std::min<size_t>(kMaxChunk, kScratchBudget / per_row)) / kMinChunk * kMinChunk;
  return std::min(std::max(chunk, kMinChunk), queries);
}

}  // namespace

size_t PromptAttentionScratchBytes(int keys, int queries, int num_q, Dtype in) {
  return static_cast<size_t>(num_q) * ChunkRows(keys, queries, num_q, in) * RoundUp8(keys) * (4 + DtypeBytes(in));
}

size_t PromptAttentionMaxScratchBytes(int keys, int queries, int num_q, Dtype in) {
  // A chunk is the budget's rows (then within the budget) or kMinChunk rows, and never more than the queries.
  const size_t per_row = static_cast<size_t>(num_q) * RoundUp8(keys) * (4 + DtypeBytes(in));
  return std::min(static_cast<size_t>(queries) * per_row, std::max(kScratchBudget, kMinChunk * per_row));
}

absl::Status EnqueuePromptAttention(Gemm& gemm, const PromptAttentionArgs& a, cudaStream_t stream) {
  const int64_t D = a.head_dim, eb = DtypeBytes(a.in), ob = DtypeBytes(a.out_type);
  const int chunk = ChunkRows(a.start_pos + a.tokens, a.tokens, a.num_q, a.in);
  const char* q = static_cast<const char*>(a.q);
  const char* k = static_cast<const char*>(a.k);
  const char* v = static_cast<const char*>(a.v);
  auto kv_head = [&](int h) { return (a.q_head_begin + h) / a.heads_per_kv - a.kv_head_begin; };
  // Runs of q heads batched into one product, each head h of a run `heads` apart from the one before: Q and the
  // output step by heads * D, the scores by heads * head_stride, K and V by kv_stride. With one q head per kv head,
  // one run of every head (K and V step along with Q). With several, the fewer of: one run per kv head (its q
  // heads share K and V: stride 0), or one run per position within a kv head's group (the h-th head of every group,
  // each group's K and V in turn: stride D). Gemma 3 27B's 32 q heads over 16 kv heads take 2 runs, not 16.
  struct Run {
    int first, count, heads;
    int64_t kv_stride;
  };
  std::vector<Run> runs;
  if (a.heads_per_kv == 1) {
    runs.push_back({0, a.num_q, 1, D});
  } else {
    std::vector<Run> by_kv, by_place;
    for (int h = 0; h < a.num_q;) {
      int end = h + 1;
      while (end < a.num_q && kv_head(end) == kv_head(h)) ++end;
      by_kv.push_back({h, end - h, 1, 0});
      h = end;
    }
    for (int h = 0; h < a.num_q && h < a.heads_per_kv; ++h) {
      const int count = (a.num_q - h + a.heads_per_kv - 1) / a.heads_per_kv;
      by_place.push_back({h, count, a.heads_per_kv, D});
    }
    // By place needs every group whole on this rank (a replicated kv head may be shared by a part of one).
    const bool whole_groups = (a.q_head_begin % a.heads_per_kv) == 0 && a.num_q % a.heads_per_kv == 0;
    runs = whole_groups && by_place.size() < by_kv.size() ? by_place : by_kv;
  }
  for (int q0 = 0; q0 < a.tokens; q0 += chunk) {
    const int m = std::min(chunk, a.tokens - q0), first_pos = a.start_pos + q0, keys = first_pos + m;
    const int64_t ld_s = RoundUp8(keys), head_stride = static_cast<int64_t>(m) * ld_s;
    float* scores = static_cast<float*>(a.scratch);
    char* probs = static_cast<char*>(a.scratch) + static_cast<size_t>(a.num_q) * head_stride * 4;
    for (const Run& r : runs) {
      GemmArgs s;  // S[h] = Q[h] K[kv]^T: the chunk's queries against keys 0..keys-1
      s.a = q + (static_cast<int64_t>(q0) * a.q_ld + r.first * D) * eb;
      s.lda = a.q_ld;
      s.w = k + kv_head(r.first) * D * eb;
      s.ldw = a.kv_ld;
      s.c = scores + r.first * head_stride;
      s.ldc = ld_s;
      s.M = m;
      s.N = keys;
      s.K = D;
      s.in = a.in;
      s.out = Dtype::kF32;
      s.batch = r.count;
      s.stride_a = r.heads * D;
      s.stride_w = r.kv_stride;
      s.stride_c = r.heads * head_stride;
      if (auto st = gemm.Run(s, stream); !st.ok()) return st;
    }
    GEMMA_CUDA_RETURN_IF_ERROR(
        LaunchCausalSoftmax(scores, ld_s, head_stride, m, a.num_q, keys, first_pos, a.window, a.softcap, probs, a.in,
                            stream));
    for (const Run& r : runs) {
      GemmArgs o;  // O[h] = P[h] V[kv], into the chunk's rows of out
      o.a = probs + r.first * head_stride * eb;
      o.lda = ld_s;
      o.w = v + kv_head(r.first) * D * eb;
      o.ldw = a.kv_ld;
      o.w_rows_are_k = true;
      o.c = static_cast<char*>(a.out) + (static_cast<int64_t>(q0) * a.out_ld + r.first * D) * ob;
      o.ldc = a.out_ld;
      o.M = m;
      o.N = D;
      o.K = keys;
      o.in = a.in;
      o.out = a.out_type;
      o.batch = r.count;
      o.stride_a = r.heads * head_stride;
      o.stride_w = r.kv_stride;
      o.stride_c = r.heads * D;
      if (auto st = gemm.Run(o, stream); !st.ok()) return st;
    }
  }
  return absl::OkStatus();
}

}  // namespace gemma::cuda
