#include "shard/cuda/cuda_bench_lora.h"

#include <memory>
#include <vector>

#include "shard/cuda/cuda_bench_decode.h"
#include "shard/model/random_lora_adapter.h"

namespace gemma {

absl::StatusOr<nlohmann::json> LoraDecodeAgainstBase(Backend& backend, int batch, int adapters, int rank, int context,
                                                     int steps, int first_block, int blocks_per_sequence) {
  std::vector<std::shared_ptr<const LoraAdapter>> held;
  std::vector<const LoraAdapter*> rows;
  for (int i = 0; i < adapters; ++i) {
    held.push_back(RandomLoraAdapter(backend.config(), rank, 1000 + i));
    rows.push_back(held.back().get());
  }
  auto before = Decode(backend, batch, context, steps, first_block, blocks_per_sequence);
  if (!before.ok()) return before.status();
  auto adapted = Decode(backend, batch, context, steps, first_block, blocks_per_sequence, rows);
  if (!adapted.ok()) return adapted.status();
  auto after = Decode(backend, batch, context, steps, first_block, blocks_per_sequence);
  if (!after.ok()) return after.status();
  const double base = (before->tokens_per_s + after->tokens_per_s) / 2;
  return nlohmann::json{{"batch", batch},
                        {"adapters", adapters},
                        {"adapter_rank", rank},
                        {"targets", "q,k,v,o,gate,up,down"},
                        {"context", context},
                        {"tokens_per_s", adapted->tokens_per_s},
                        {"base_tokens_per_s_before", before->tokens_per_s},
                        {"base_tokens_per_s_after", after->tokens_per_s},
                        {"fraction_of_base", adapted->tokens_per_s / base},
                        {"launched_step_ms", adapted->launched_step_ms},
                        {"launched_stage_ms", adapted->launched_stages},
                        {"base_launched_step_ms", after->launched_step_ms}};
}

}  // namespace gemma
