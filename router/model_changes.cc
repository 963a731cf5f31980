#include "router/model_changes.h"

#include <climits>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace gemma {
namespace {

absl::Status Bad(int i, const std::string& what) {
  return absl::InvalidArgumentError(
      absl::StrCat("interventions[", i, "].", what));
}

absl::Status CheckLayer(int i, const char* kind, int32_t layer,
                        const worker::v1::ModelInfo& model) {
  if (layer < 0 || layer >= model.num_layers()) {
    return Bad(i, absl::StrCat(kind, ".layer is ", layer, "; allowed: 0 to ",
                               model.num_layers() - 1));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelChanges> ModelChangesOf(
    const worker::v1::ModelInfo& model, const std::string& adapter,
    const google::protobuf::RepeatedPtrField<v1::Intervention>& interventions,
    int32_t prompt_len, bool adapter_loaded) {
  ModelChanges out;
  if (!adapter.empty() && !adapter_loaded) {
    return absl::InvalidArgumentError(absl::StrCat(
        "adapter \"", adapter,
        "\" is not loaded; ModelInfo.adapters lists those that are"));
  }
  out.adapter = adapter;
  if (interventions.size() > kMaxInterventions) {
    return absl::InvalidArgumentError(
        absl::StrCat("interventions has ", interventions.size(),
                     " entries; allowed: up to ", kMaxInterventions));
  }
  for (int i = 0; i < interventions.size(); ++i) {
    const v1::Intervention& in = interventions[i];
    Intervention iv;
    switch (in.change_case()) {
      case v1::Intervention::kSteer: {
        iv.kind = InterventionKind::kSteer;
        iv.layer = in.steer().layer();
        if (auto s = CheckLayer(i, "steer", iv.layer, model); !s.ok()) return s;
        if (in.steer().vector_size() != model.hidden_size()) {
          return Bad(i,
                     absl::StrCat("steer.vector has ", in.steer().vector_size(),
                                  " values; the model's hidden size is ",
                                  model.hidden_size()));
        }
        for (float v : in.steer().vector()) {
          if (!std::isfinite(v))
            return Bad(i, "steer.vector holds a value that is not finite");
        }
        iv.vector.assign(in.steer().vector().begin(),
                         in.steer().vector().end());
        break;
      }
      case v1::Intervention::kScaleAttention:
      case v1::Intervention::kScaleMlp: {
        const bool attn = in.change_case() == v1::Intervention::kScaleAttention;
        const v1::ScaleOutput& sc =
            attn ? in.scale_attention() : in.scale_mlp();
        const char* name = attn ? "scale_attention" : "scale_mlp";
        iv.kind = attn ? InterventionKind::kScaleAttention
                       : InterventionKind::kScaleMlp;
        iv.layer = sc.layer();
        if (auto s = CheckLayer(i, name, iv.layer, model); !s.ok()) return s;
        if (!std::isfinite(sc.factor()))
          return Bad(i, absl::StrCat(name, ".factor must be finite"));
        iv.factor = sc.factor();
        break;
      }
      case v1::Intervention::kAblateHead: {
        iv.kind = InterventionKind::kAblateHead;
        iv.layer = in.ablate_head().layer();
        if (auto s = CheckLayer(i, "ablate_head", iv.layer, model); !s.ok())
          return s;
        iv.head = in.ablate_head().head();
        if (iv.head < 0 || iv.head >= model.num_heads()) {
          return Bad(i,
                     absl::StrCat("ablate_head.head is ", iv.head,
                                  "; allowed: 0 to ", model.num_heads() - 1));
        }
        break;
      }
      default:
        return Bad(i,
                   "change is unset; set one of steer, scale_attention, "
                   "scale_mlp, ablate_head");
    }
    switch (in.positions()) {
      case v1::POSITIONS_ALL:
        break;
      case v1::POSITIONS_PROMPT:
        iv.end_pos = prompt_len;
        break;
      case v1::POSITIONS_GENERATED:
        iv.begin_pos = prompt_len;
        break;
      default:
        return Bad(i, absl::StrCat("positions ", in.positions(),
                                   " is not one of ALL, PROMPT, GENERATED"));
    }
    out.interventions.push_back(std::move(iv));
  }
  return out;
}

}  // namespace gemma
