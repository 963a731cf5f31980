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
  batch_ = batch;
  num_layers_ = num_layers;
  capture_ = capture;
  rows_.clear();
  reads_.clear();
  int64_t first = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceStep& s = batch[i];
    const int64_t count = static_cast<int64_t>(s.tokens.size());
    if ((capture && !s.activations.empty()) || !s.interventions.empty()) {
      rows_.push_back({static_cast<int>(i), first, count, s.start_pos});
    }
    first += count;
  }
  if (!capture) return;
  for (const Row& r : rows_) {
    const SequenceStep& s = batch[r.index];
    if (s.activations.empty()) continue;
    if (reads_.empty()) reads_.resize(batch.size());
    reads_[r.index].assign(s.activations.size(), std::vector<float>(r.count * hidden_));
  }
}

std::pair<int64_t, int> CudaStepHooks::TokensIn(const Row& row, const Intervention& iv) {
  // A row's tokens hold consecutive positions start_pos..start_pos + count - 1.
  const int64_t begin = std::max<int64_t>(iv.begin_pos, row.start_pos);
  const int64_t end = std::min<int64_t>(iv.end_pos, row.start_pos + row.count);
  if (end <= begin) return {row.first, 0};
  return {row.first + (begin - row.start_pos), static_cast<int>(end - begin)};
}

bool CudaStepHooks::NeedsResidualAfter(int layer) const {
  for (const Row& r : rows_) {
    for (const Intervention& iv : batch_[r.index].interventions) {
      if (iv.kind == InterventionKind::kSteer && iv.layer == layer) return true;
    }
  }
  return layer + 1 < num_layers_ && Reads(ActivationKind::kResidual, layer + 1);
}

bool CudaStepHooks::Reads(ActivationKind kind, int index) const {
  if (reads_.empty()) return false;
  for (const Row& r : rows_) {
    for (const ActivationPoint& p : batch_[r.index].activations) {
      if (p.kind == kind && p.index == index) return true;
    }
  }
  return false;
}

absl::Status CudaStepHooks::AblateHeads(int layer, const TensorParallel& tp, int head_dim, void* attn, Dtype type,
                                        cudaStream_t stream) const {
  const int64_t q_dim = int64_t{tp.num_q_heads} * head_dim;
  for (const Row& r : rows_) {
    for (const Intervention& iv : batch_[r.index].interventions) {
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
  for (const Row& r : rows_) {
    for (const Intervention& iv : batch_[r.index].interventions) {
      if (iv.kind != kind || iv.layer != layer) continue;
      const auto [first, count] = TokensIn(r, iv);
      GEMMA_CUDA_RETURN_IF_ERROR(LaunchScaleRows(proj, hidden_, first, count, hidden_, iv.factor, stream));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaStepHooks::Steer(int layer, float* x, cudaStream_t stream) const {
  for (const Row& r : rows_) {
    for (const Intervention& iv : batch_[r.index].interventions) {
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
  if (reads_.empty()) return absl::OkStatus();
  for (const Row& r : rows_) {
    const auto points = batch_[r.index].activations;
    for (size_t j = 0; j < points.size(); ++j) {
      if (points[j].kind != kind || points[j].index != index) continue;
      // Into pageable memory: the call returns once the copy has landed, after the work enqueued before it.
      GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(reads_[r.index][j].data(), values + r.first * hidden_,
                                                 r.count * hidden_ * 4, cudaMemcpyDeviceToHost, stream));
    }
  }
  return absl::OkStatus();
}

void CudaStepHooks::TakeActivations(std::vector<std::vector<std::vector<float>>>* out) {
  *out = std::move(reads_);
  reads_.clear();
}

}  // namespace gemma::cuda
