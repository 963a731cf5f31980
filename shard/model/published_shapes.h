// The Gemma 2 and Gemma 3 text models as Google published them (their config.json values), for make-tiny.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "shard/model/model_config.h"

namespace gemma {

// ("gemma2-2b", config), ... in the order of `gemma make-tiny --shape` (Gemma 1's are in model_config.h). The
// multimodal 4B/12B/27B keep their published layout: text under text_config, tensors under language_model.
const std::vector<std::pair<std::string, ModelConfig>>& PublishedGemma23Shapes();

// A shape by name: tiny, 2b or 7b (Gemma 1), or one of PublishedGemma23Shapes(); InvalidArgument naming those
// allowed otherwise.
absl::StatusOr<ModelConfig> ShapeNamed(const std::string& name);
// The names ShapeNamed takes, joined by `separator`.
std::string ShapeNames(const std::string& separator);

// Sets the layer count, extending or cutting the family's local/global pattern (Gemma 2: layer 0 local, then
// alternating; Gemma 3: every sixth global) so that a shortened model keeps it.
void SetNumLayers(int layers, ModelConfig* config);

}  // namespace gemma
