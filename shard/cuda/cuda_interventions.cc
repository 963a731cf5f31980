#include "shard/cuda/cuda_interventions.h"

#include <algorithm>

#include "shard/cuda/cuda_status.h"
#include "shard/cuda/intervention_kernels.h"

namespace gemma::cuda {

absl::Status CudaStepHooks::Reserve(int64_t hidden) {
  auto v = DeviceBuffer::Allocate(static_cast<size_t>(hidden) * 4, "a steering vector");
  if (!v.ok()) return v.status();
  vector_ = std::move(*v);
  hidden_ = hidden;
  return absl::OkStatus();
}

void CudaStepHooks::Reset(std::span<const SequenceStep> batch, int num_layers, bool capture) {
  num_layers_ = num_layers;
  hooked_.Reset(batch, hidden_, capture);
}

std::pair<int64_t, int> CudaStepHooks::TokensIn(const Row& row, const Intervention& iv) const {
  // A row's tokens hold consecutive positions start_pos..start_pos + count - 1.
  const int64_t start = hooked_.batch()[row.index].start_pos;
  const int64_t begin = std::max<int64_t>(iv.begin_pos, start);
  const int64_t end = std::min<int64_t>(iv.end_pos, start + row.count);
  if (end <= begin) return {row.first, 0};
  return {row.first + (begin - start), static_cast<int>(end - begin)};
}

bool CudaStepHooks::NeedsResidualAfter(int layer) const {
  for (const Row& r : hooked_.rows()) {
    for (const Intervention& iv : hooked_.batch()[r.index].interventions) {
      if (iv.kind == InterventionKind::kSteer && iv.layer == layer) return true;
    }
  }
  return layer + 1 < num_layers_ && Reads(ActivationKind::kResidual, layer + 1);
}

absl::Status CudaStepHooks::AblateHeads(int layer, const TensorParallel& tp, int head_dim, void* attn, Dtype type,
                                        cudaStream_t stream) const {
  const int64_t q_dim = int64_t{tp.num_q_heads} * head_dim;
  for (const Row& r : hooked_.rows()) {
    for (const Intervention& iv : hooked_.batch()[r.index].interventions) {
      if (iv.kind != InterventionKind::kAblateHead || iv.layer != layer) continue;
      const int local = iv.head - tp.q_head_begin;
      if (local < 0 || local >= tp.num_q_heads) continue;  // another rank's head
      const auto [first, count] = TokensIn(r, iv);
      GEMMA_CUDA_RETURN_IF_ERROR(
          LaunchZeroColumns(attn, type, q_dim, first, count, int64_t{local} * head_dim, head_dim, stream));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaStepHooks::Scale(InterventionKind kind, int layer, float* proj, cudaStream_t stream) const {
  for (const Row& r : hooked_.rows()) {
    for (const Intervention& iv : hooked_.batch()[r.index].interventions) {
      if (iv.kind != kind || iv.layer != layer) continue;
      const auto [first, count] = TokensIn(r, iv);
      GEMMA_CUDA_RETURN_IF_ERROR(LaunchScaleRows(proj, hidden_, first, count, hidden_, iv.factor, stream));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaStepHooks::Steer(int layer, float* x, cudaStream_t stream) const {
  for (const Row& r : hooked_.rows()) {
    for (const Intervention& iv : hooked_.batch()[r.index].interventions) {
      if (iv.kind != InterventionKind::kSteer || iv.layer != layer) continue;
      const auto [first, count] = TokensIn(r, iv);
      if (count == 0) continue;
      // One device vector serves every steer: the stream runs each copy after the kernel that read the one before.
      GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(vector_.get(), iv.vector.data(), hidden_ * 4,
                                                 cudaMemcpyHostToDevice, stream));
      GEMMA_CUDA_RETURN_IF_ERROR(LaunchAddToRows(x, hidden_, first, count, hidden_, vector_.as<float>(), stream));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaStepHooks::Capture(ActivationKind kind, int index, const float* values, cudaStream_t stream) {
  absl::Status status;
  hooked_.ForEachRead(kind, index, [&](const Row& r, float* out) {
    // Into pageable memory: the call returns once the copy has landed, after the work enqueued before it.
    if (!status.ok()) return;
    status = CudaError(cudaMemcpyAsync(out, values + r.first * hidden_, r.count * hidden_ * 4, cudaMemcpyDeviceToHost,
                                       stream),
                       "cudaMemcpyAsync", __FILE__, __LINE__);
  });
  return status;
}

void CudaStepHooks::TakeActivations(std::vector<std::vector<std::vector<float>>>* out) { hooked_.TakeReads(out); }

}  // namespace gemma::cuda
