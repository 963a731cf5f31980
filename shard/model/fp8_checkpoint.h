// Reads the FP8 projections of a compressed-tensors checkpoint (model_config.h's CheckpointQuantization kFp8) into
// the kFp8 format of matrix_view.h: codes as stored, scales widened to f32, one per output row.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/model/matrix_view.h"

namespace gemma {

// Whether `module` ("model.layers.0.self_attn.q_proj") stores an FP8 weight; a module the config's "ignore" list
// left alone holds a plain bf16/f16/f32 weight instead.
bool IsFp8Module(const Checkpoint& checkpoint, const std::string& module);

// Rows [row_begin, +rows) (outputs) and columns [col_begin, +cols) (inputs) of the [out, in] FP8 projection
// `module` (its .weight and .weight_scale), copied into memory from `allocate(bytes)`. InvalidArgument naming the
// tensor for a wrong dtype or shape, a NaN code, or a scale that is not a finite number.
absl::StatusOr<MatrixView> ReadFp8(const Checkpoint& checkpoint, const std::string& module, int64_t out, int64_t in,
                                   int64_t row_begin, int64_t rows, int64_t col_begin, int64_t cols,
                                   const std::function<uint8_t*(int64_t)>& allocate);

}  // namespace gemma
