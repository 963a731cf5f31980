// gemma kv-capacity: what the KV cache of a model shape costs per token and the longest context that fits a budget,
// with and without KV windows, from the cache's own layout (KvLayout) and the block manager's own accounting.
#include <cstdio>
#include <string>

#include "engine/block_manager.h"
#include "nlohmann/json.hpp"
#include "shard/model/published_shapes.h"
#include "shard/model/tensor_parallel.h"
#include "shard/runtime/kv_cache.h"
#include "tools/cli_common.h"
#include "tools/commands.h"

namespace gemma {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// One layout of the cache: its block, what a position costs, and for each budget how many blocks it holds and the
// most positions one sequence may reach in them (BlockManager::MostBlocksHeld: global blocks for every position,
// local ones for the window, a chunk and a block).
nlohmann::json Layout(const ModelConfig& config, int kv_heads, bool windowed, int block_size, int dtype_bytes,
                      int chunk, const std::vector<int64_t>& budgets) {
  const KvLayout layout(config, windowed);
  const KvWindow w = layout.window();
  const int64_t block_bytes = layout.BlockValues(block_size, kv_heads, config.head_dim) * dtype_bytes;
  const int64_t per_position = block_bytes / block_size;  // one block index's global block, per position
  const BlockManager blocks(0, block_size, false, w);
  nlohmann::json out = {{"windowed", w.enabled()},
                        {"layers_per_block", layout.group_layers()},
                        {"local_groups", w.local_groups},
                        {"block_bytes", block_bytes},
                        // Every position keeps its global layers; a position inside the window also its local ones.
                        {"bytes_per_token", per_position},
                        {"bytes_per_token_in_window", per_position * (1 + w.local_groups)},
                        {"most_local_bytes_per_sequence",
                         (blocks.MostBlocksHeld(config.max_position_embeddings, chunk) -
                          blocks.BlocksFor(config.max_position_embeddings)) * block_bytes},
                        {"budgets", nlohmann::json::array()}};
  for (int64_t budget : budgets) {
    const int64_t num_blocks = budget / block_bytes;
    // The most positions whose blocks fit: MostBlocksHeld grows with the positions, so a binary search.
    int64_t lo = 0, hi = num_blocks * block_size;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo + 1) / 2;
      if (blocks.MostBlocksHeld(mid, chunk) <= num_blocks) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    out["budgets"].push_back({{"kv_bytes", budget},
                              {"kv_gib", budget / kGiB},
                              {"blocks", num_blocks},
                              {"positions_that_fit", lo},
                              {"longest_context", std::min<int64_t>(lo, config.max_position_embeddings)}});
  }
  return out;
}

}  // namespace

int KvCapacityCommand(int argc, char** argv) {
  const char* kCmd = "kv-capacity";
  Args args(kCmd, "[--shape " + ShapeNames("|") + "] [--kv-gib G,...] [--tp N] [--block-size B] [--dtype-bytes 2|4] "
                  "[--prefill-chunk T]");
  args.Flag("shape", "the model shape, one of " + ShapeNames(", ") + " (default gemma3-27b)")
      .Flag("kv-gib", "KV-cache budgets per rank in GiB, comma-separated (default 8,16,32,64)")
      .Flag("tp", "tensor-parallel degree: a rank holds its share of the KV heads (default 1)")
      .Flag("block-size", "positions per KV block (default 16, as the backends)")
      .Flag("dtype-bytes", "bytes per cached value: 2 (bf16, the GPU cache; default) or 4 (f32, the CPU cache)")
      .Flag("prefill-chunk", "the most prompt tokens of a sequence in one step (default 2048, the worker's "
                             "--max_tokens_per_step)");
  int code;
  if (!ParseOrExit(args, argc, argv, kCmd, &code)) return code;
  auto shape = ShapeNamed(args.Get("shape", "gemma3-27b"));
  if (!shape.ok()) return Fail(kCmd, absl::InvalidArgumentError("--" + std::string(shape.status().message())));
  auto gib = args.Has("kv-gib") ? args.GetIntList("kv-gib", 1, 1 << 20) : std::vector<int32_t>{8, 16, 32, 64};
  auto tp = args.GetInt("tp", 1, 1, 64);
  auto block_size = args.GetInt("block-size", 16, 1, 1024);
  auto dtype_bytes = args.GetInt("dtype-bytes", 2, 2, 4);
  auto chunk = args.GetInt("prefill-chunk", 2048, 1, 1 << 20);
  for (const absl::Status& s : {gib.status(), tp.status(), block_size.status(), dtype_bytes.status(), chunk.status()}) {
    if (!s.ok()) return Fail(kCmd, s);
  }
  if (*dtype_bytes == 3) return Fail(kCmd, absl::InvalidArgumentError("--dtype-bytes 3 is invalid; allowed: 2, 4"));
  auto rank = TensorParallel::Create(*shape, 0, static_cast<int>(*tp));
  if (!rank.ok()) return Fail(kCmd, rank.status());
  std::vector<int64_t> budgets;
  for (int32_t g : *gib) budgets.push_back(static_cast<int64_t>(g) * (int64_t{1} << 30));
  int local = 0;
  for (int l = 0; l < shape->num_layers; ++l) local += shape->IsLocal(l) ? 1 : 0;
  const int b = static_cast<int>(*block_size), d = static_cast<int>(*dtype_bytes), c = static_cast<int>(*chunk);
  nlohmann::json out = {
      {"shape", shape->ShapeName()},
      {"model", shape->DebugString()},
      {"layers", shape->num_layers},
      {"local_layers", local},
      {"sliding_window", shape->sliding_window},
      {"context", shape->max_position_embeddings},
      {"weights_bytes_bf16", shape->ParameterCount() * 2},  // the whole model, for the budget left beside it
      {"tp", *tp},
      {"kv_heads_per_rank", rank->num_kv_heads},
      {"head_dim", shape->head_dim},
      {"block_size", b},
      {"dtype_bytes", d},
      {"prefill_chunk", c},
      {"without_windows", Layout(*shape, rank->num_kv_heads, false, b, d, c, budgets)},
      {"with_windows", Layout(*shape, rank->num_kv_heads, true, b, d, c, budgets)}};
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

}  // namespace gemma
