#include "shard/cuda/cuda_model_support.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace gemma {

absl::Status CheckCudaModelSupport(const ModelConfig& c) {
  std::vector<std::string> missing;
  if (c.sandwich_norms()) missing.push_back("sandwich norms (post-attention, pre- and post-feed-forward RMSNorm)");
  if (c.QueryScalar() != static_cast<float>(c.head_dim)) {
    missing.push_back(absl::StrCat("query_pre_attn_scalar ", c.QueryScalar(), " != head_dim ", c.head_dim));
  }
  if (c.attn_logit_softcap > 0) missing.push_back("attention score soft-capping");
  if (c.final_logit_softcap > 0) missing.push_back("final logit soft-capping");
  for (int i = 0; i < c.num_layers; ++i) {
    if (c.IsLocal(i)) {
      missing.push_back(absl::StrCat("sliding-window attention (window ", c.sliding_window, ")"));
      break;
    }
  }
  if (c.qk_norm()) missing.push_back("QK-norm");
  if (c.rope_local_theta > 0 && c.rope_local_theta != c.rope_theta) missing.push_back("per-layer RoPE bases");
  if (c.rope_global_scale != 1.0f) missing.push_back("linear RoPE scaling");
  if (missing.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "the CUDA backend does not implement ", ModelFamilyName(c.family), "'s ", absl::StrJoin(missing, ", "),
      "; serve this model with --device cpu"));
}

}  // namespace gemma
