#include "shard/runtime/backend.h"

#include <algorithm>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace gemma {
namespace {

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

StageTimer::StageTimer(double* current) : current_(current), start_(NowSeconds()) {}
StageTimer::~StageTimer() { Switch(nullptr); }

void StageTimer::Switch(double* next) {
  const double now = NowSeconds();
  if (current_ != nullptr) *current_ += now - start_;
  current_ = next;
  start_ = now;
}

absl::Status ValidateStep(std::span<const SequenceStep> batch, const ModelConfig& config, int num_blocks,
                          int block_size) {
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceStep& s = batch[i];
    if (s.tokens.empty()) return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": no tokens in step"));
    if (s.start_pos < 0) return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": negative start position"));
    const int64_t end = static_cast<int64_t>(s.start_pos) + static_cast<int64_t>(s.tokens.size());
    if (end > config.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": positions up to ", end, " exceed the context of ",
                                                     config.max_position_embeddings));
    }
    if (end > static_cast<int64_t>(s.block_table.size()) * block_size) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": block table of ", s.block_table.size(),
                                                     " blocks covers ", s.block_table.size() * block_size,
                                                     " positions, step needs ", end));
    }
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= config.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": token id ", t, " is outside the vocabulary [0, ",
                                                       config.vocab_size, ")"));
      }
    }
    for (int32_t b : s.block_table) {
      if (b < 0 || b >= num_blocks) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": block id ", b, " is outside the pool [0, ",
                                                       num_blocks, ")"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Backend::ForwardAndSample(std::span<const SequenceStep> batch, std::span<const RowSample> samples, bool,
                                       StepLogits* out, std::vector<SampledToken>* tokens) {
  RETURN_IF_ERROR(Forward(batch, out));
  tokens->clear();
  const int vocab = config().vocab_size;
  for (const RowSample& r : samples) {
    const float* row = out->Row(r.row);
    int token;
    if (r.allowed.empty()) {
      token = SampleAt(r.params, r.position, row, vocab);
    } else {  // on a copy: the reported log-prob stays the model's own
      std::vector<float> masked(row, row + vocab);
      ApplyTokenMask(r.allowed, masked.data(), vocab);
      token = SampleAt(r.params, r.position, masked.data(), vocab);
    }
    tokens->push_back({token, static_cast<float>(LogProbOf(row, vocab, token))});
  }
  return absl::OkStatus();
}

}  // namespace gemma
