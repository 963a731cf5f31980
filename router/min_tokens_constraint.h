// vLLM's min_tokens as an engine constraint: a sequence's stop tokens are masked out until it has generated its
// minimum, then it constrains nothing (and its steps may overlap again).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/token_constraint.h"

namespace gemma {

// Not thread-safe: one sequence's, used by the engine's thread only (as every TokenConstraint).
class MinTokensConstraint : public TokenConstraint {
 public:
  // `stops`: the ids that would end the sequence (each in [0, vocab)); `vocab`: the model's vocabulary size.
  MinTokensConstraint(const std::vector<int32_t>& stops, int32_t min_tokens, int32_t vocab);

  const std::vector<uint32_t>& Allowed() override { return mask_; }
  absl::Status Accept(int32_t token) override;
  bool Constrains() const override { return generated_ < min_tokens_; }

 private:
  const int32_t min_tokens_;
  int32_t generated_ = 0;
  std::vector<uint32_t> mask_;  // every token but the stops
};

// Null when min_tokens is 0 or there are no stops (nothing to hold back).
std::shared_ptr<TokenConstraint> MinTokens(const std::vector<int32_t>& stops, int32_t min_tokens, int32_t vocab);

}  // namespace gemma
