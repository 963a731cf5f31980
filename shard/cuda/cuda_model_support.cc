#include "shard/cuda/cuda_model_support.h"

#include "absl/strings/str_cat.h"

namespace gemma {

absl::Status CheckCudaModelSupport(const ModelConfig& c, const TensorParallel& tp) {
  if (c.head_dim > 256 || c.head_dim % 4 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("head_dim ", c.head_dim,
                                                   " is not supported by the CUDA attention kernels; allowed: a "
                                                   "multiple of 4, at most 256; serve this model with --device cpu"));
  }
  if (tp.q_head_replicas > 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the CUDA backend does not implement query heads replicated across ranks (tensor-parallel degree ", tp.world,
        " > ", c.num_heads, " heads); allowed: a divisor of the heads"));
  }
  return absl::OkStatus();
}

}  // namespace gemma
