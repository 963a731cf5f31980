// Writes a checkpoint's projections pre-quantized, in the layouts vLLM loads (and packed_int4.h / fp8_checkpoint.h
// read): 4-bit GPTQ or AWQ, or compressed-tensors FP8.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/model/model_config.h"

namespace gemma {

// Copies the checkpoint at `in` to `out_dir` (created if needed) with every projection of the text model quantized
// as `method` says; everything else (embedding, norms, a vision tower, tokenizer files) as it is; config.json gains
// the quantization_config the format's own tools write.
//  kGptq, kAwq: 4 bits in groups of `group_size` input columns (round to nearest over each group's
//        [min(w, 0), max(w, 0)]) packed in the method's layout with f16 scales. GPTQ is written in its original
//        format (zeros stored minus one), where a zero of 0 cannot be stored: such a group takes zero 1 and spreads
//        its range over the 14 codes above it.
//  kFp8: E4M3 weights with one f32 scale per output channel (max |w| / 448), as llm-compressor's FP8 W8A16
//        scheme writes them (`group_size` unused).
// Shows progress on a terminal.
absl::Status WriteQuantizedCheckpoint(const Checkpoint& in, const std::string& out_dir,
                                      CheckpointQuantization::Method method, int group_size);

}  // namespace gemma
