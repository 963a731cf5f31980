// Per-row interventions (steering, scaling, head ablation) and activation reads of the CUDA forward pass, at the
// points the CPU's StepHooks (shard/cpu/interventions.h) define, with the same meaning. The forward pass calls these
// at fixed points of each layer; only the tokens of rows that ask are touched, so the other rows of a step are
// computed bit for bit as in a step without any. Each intervention acts on one block of consecutive tokens (a row's
// tokens within its positions) through one small kernel; reads are copied to the host as the step reaches them.
// Not thread-safe; reused across steps (Reset each time).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "shard/cuda/device_buffer.h"
#include "shard/cuda/kernels.h"
#include "shard/model/tensor_parallel.h"
#include "shard/runtime/backend.h"
#include "shard/runtime/hooked_rows.h"

namespace gemma::cuda {

class CudaStepHooks {
 public:
  // The one device vector a steer reads (hidden floats), reserved at start.
  absl::Status Reserve(int64_t hidden);
  int64_t reserved_bytes() const { return static_cast<int64_t>(vector_.bytes()); }

  // Looks at the step's rows (tokens laid out row after row); `capture` is false on tensor-parallel followers
  // (only rank 0 reads activations).
  void Reset(std::span<const SequenceStep> batch, int num_layers, bool capture);
  // Whether any row asks for anything: with neither, every other call does nothing.
  bool active() const { return !hooked_.rows().empty(); }
  // Whether the residual stream after decoder layer `layer` must exist in full (a steer there, or a read of
  // residual layer + 1): the forward pass otherwise adds a layer's MLP output in the next layer's fused norm.
  bool NeedsResidualAfter(int layer) const;
  // Whether a row reads `kind` at `index`.
  bool Reads(ActivationKind kind, int index) const { return hooked_.Reads(kind, index); }

  // kAblateHead: zeroes, in attn ([T, num_q_heads * head_dim] of `type`, this rank's heads), each ablated head
  // this rank holds.
  absl::Status AblateHeads(int layer, const TensorParallel& tp, int head_dim, void* attn, Dtype type,
                           cudaStream_t stream) const;
  // kScaleAttention / kScaleMlp: proj ([T, hidden], summed over the ranks, after any post-norm).
  absl::Status ScaleAttention(int layer, float* proj, cudaStream_t stream) const {
    return Scale(InterventionKind::kScaleAttention, layer, proj, stream);
  }
  absl::Status ScaleMlp(int layer, float* proj, cudaStream_t stream) const {
    return Scale(InterventionKind::kScaleMlp, layer, proj, stream);
  }
  // kSteer: x ([T, hidden]) is the residual stream after decoder layer `layer`.
  absl::Status Steer(int layer, float* x, cudaStream_t stream) const;
  // Copies the reading rows of `values` ([T, hidden], f32 on the device) into the reads of `kind` at `index`; the
  // copy is ordered after the step's work so far on `stream`.
  absl::Status Capture(ActivationKind kind, int index, const float* values, cudaStream_t stream);
  // Hands the reads over once the step's stream has finished: out[i][j] is row i's point j, [its tokens, hidden];
  // empty for rows without reads.
  void TakeActivations(std::vector<std::vector<std::vector<float>>>* out);

 private:
  using Row = HookedRows::Row;
  absl::Status Scale(InterventionKind kind, int layer, float* proj, cudaStream_t stream) const;
  // The row's tokens within the intervention's positions: [first, first + count) of the step (count may be 0).
  std::pair<int64_t, int> TokensIn(const Row& row, const Intervention& iv) const;

  int64_t hidden_ = 0;
  int num_layers_ = 0;
  HookedRows hooked_;  // the rows that ask for interventions or reads, and their reads
  DeviceBuffer vector_;
};

}  // namespace gemma::cuda
