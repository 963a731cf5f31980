// Reads the 4-bit projections of a GPTQ or AWQ checkpoint (model_config.h's CheckpointQuantization) into the
// kInt4 format of matrix_view.h: lossless, codes and zeros as stored, scales widened to f32.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/model/matrix_view.h"

namespace gemma {

// The nibble of a packed AWQ word that holds output column j of its eight (AutoAWQ packs them 0, 2, 4, 6, 1, 3,
// 5, 7).
inline constexpr int kAwqNibbleOfColumn[8] = {0, 4, 1, 5, 2, 6, 3, 7};

// Rows [row_begin, +rows) (outputs) and columns [col_begin, +cols) (inputs) of the [out, in] projection stored
// under `module` ("model.layers.0.self_attn.q_proj": its .qweight, .qzeros, .scales and GPTQ's optional .g_idx),
// into memory from `allocate(bytes)`. The column range must keep whole groups. InvalidArgument naming the tensor
// for a wrong dtype or shape, a g_idx that reorders inputs, or a slice that cuts a group.
absl::StatusOr<MatrixView> ReadPackedInt4(const Checkpoint& checkpoint, const std::string& module, int64_t out,
                                          int64_t in, int64_t row_begin, int64_t rows, int64_t col_begin,
                                          int64_t cols, const std::function<uint8_t*(int64_t)>& allocate);

}  // namespace gemma
