// Writes a checkpoint's projections as 4-bit GPTQ or AWQ tensors (the layouts packed_int4.h reads and vLLM loads).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/model/model_config.h"

namespace gemma {

// Copies the checkpoint at `in` to `out_dir` (created if needed) with every projection of the text model quantized
// to 4 bits in groups of `group_size` input columns (round to nearest over each group's [min(w, 0), max(w, 0)])
// and packed in `method`'s layout with f16 scales; everything else (embedding, norms, a vision tower, tokenizer
// files) as it is; config.json gains the quantization_config AutoGPTQ / AutoAWQ write. GPTQ is written in its
// original format (zeros stored minus one), where a zero of 0 cannot be stored: such a group takes zero 1 and
// spreads its range over the 14 codes above it. Shows progress on a terminal.
absl::Status WritePackedInt4Checkpoint(const Checkpoint& in, const std::string& out_dir,
                                       CheckpointQuantization::Method method, int group_size);

}  // namespace gemma
