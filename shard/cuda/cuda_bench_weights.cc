#include "shard/cuda/cuda_bench_weights.h"

#include <cstdio>
#include <utility>

#include "shard/cuda/cuda_bench_decode.h"
#include "shard/model/model_weights.h"
#include "shard/model/quantize.h"

namespace gemma {

nlohmann::json QuantizedDecode(std::shared_ptr<const Checkpoint> checkpoint, const QuantizedDecodeSetup& setup,
                               std::span<const std::string> formats) {
  nlohmann::json out = nlohmann::json::array();
  for (const std::string& format : formats) {
    nlohmann::json entry = {{"weights", format}};
    auto run = [&]() -> absl::Status {
      auto precision = ParseWeightPrecision(format);
      if (!precision.ok()) return precision.status();
      WeightLoadOptions load;
      load.precision = *precision;
      std::fprintf(stderr, "gemma-cuda-bench: quantizing the weights to %s\n", format.c_str());
      auto tp = TensorParallel::Create(checkpoint->config(), 0, 1);
      if (!tp.ok()) return tp.status();
      auto loaded = ModelWeights::Load(checkpoint, *tp, load);
      if (!loaded.ok()) return loaded.status();
      std::shared_ptr<const ModelWeights> w(std::move(*loaded));
      auto backend = CreateCudaBackend(w, setup.kv, setup.options);
      if (!backend.ok()) return backend.status();
      const double weight_bytes = static_cast<double>(w->WeightBytesPerStep());
      entry["weight_bytes_per_step"] = weight_bytes;
      nlohmann::json rows = nlohmann::json::array();
      for (int batch : setup.batches) {
        auto r = Decode(**backend, batch, setup.context, setup.steps, setup.first_block, setup.blocks_per_sequence);
        if (!r.ok()) return r.status();
        const double step_ms = 1000.0 * batch / r->tokens_per_s;
        const double floor_ms =
            1000 * (weight_bytes + batch * (setup.context + setup.steps / 2.0 + 2) * setup.kv_bytes_per_position) /
            setup.bandwidth;
        rows.push_back({{"batch", batch}, {"tokens_per_s", r->tokens_per_s}, {"step_ms", step_ms},
                        {"floor_ms", floor_ms}, {"floor_fraction", floor_ms / step_ms},
                        {"launched_step_ms", r->launched_step_ms}, {"launched_stage_ms", r->launched_stages}});
      }
      entry["decode"] = rows;
      return absl::OkStatus();
    };
    if (auto s = run(); !s.ok()) entry["error"] = std::string(s.message());
    out.push_back(entry);
  }
  return out;
}

}  // namespace gemma
