#include "tools/local_model.h"

#include <omp.h>

#include <algorithm>
#include <filesystem>

#include "shard/checkpoint.h"
#include "shard/cpu/cpu_backend.h"
#include "tools/default_model.h"

namespace gemma {

absl::StatusOr<LocalModel> OpenLocalModel(const std::string& dir_or_empty) {
  std::string dir = dir_or_empty;
  if (dir.empty()) {
    auto d = EnsureDefaultModel();
    if (!d.ok()) return d.status();
    dir = *d;
  }
  auto checkpoint = Checkpoint::Open(dir);
  if (!checkpoint.ok()) return checkpoint.status();
  auto weights = ModelWeights::Load(std::shared_ptr<const Checkpoint>(std::move(*checkpoint)));
  if (!weights.ok()) return weights.status();
  LocalModel m;
  m.weights = std::shared_ptr<const ModelWeights>(std::move(*weights));
  const std::string tok_path = (std::filesystem::path(dir) / "tokenizer.model").string();
  if (std::filesystem::exists(tok_path)) {
    auto tok = Tokenizer::FromFile(tok_path);
    if (!tok.ok()) return tok.status();
    m.tokenizer = std::move(*tok);
  }
  return m;
}

absl::Status AttachBackend(LocalModel& model, int64_t kv_tokens) {
  KvCacheOptions kv;
  kv.num_blocks = static_cast<int>(std::max<int64_t>(1, (kv_tokens + kv.block_size - 1) / kv.block_size));
  auto backend = CpuBackend::Create(model.weights, kv);
  if (!backend.ok()) return backend.status();
  model.backend = std::move(*backend);
  return absl::OkStatus();
}

void SetThreads(int threads) { omp_set_num_threads(threads > 0 ? threads : omp_get_num_procs()); }

}  // namespace gemma
